"""Stage "splits": stratified, patient-grouped folds that every method shares (rules/splits.smk)."""
