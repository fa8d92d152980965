"""Stage "datasets": download, label, convert and annotate the paper's public datasets (rules/datasets.smk).

Where their files come from, how they are labelled, converted and annotated.

`registry` knows each dataset's layout and label table, `download` fetches a source (local, url, kaggle, s3;
`secure_http` does the https transfers),
`convert` turns plain JPEG/PNG images into pyramidal TIFF that OpenSlide reads, and `annotation_formats` turns each
dataset's lesion annotations into GeoJSON polygons in level-0 pixel coordinates.
Submodules are imported by their users, so that importing the package costs nothing.
"""
