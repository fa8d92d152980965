# rules for pretrained backbone weights (model.pretrained: true): fetched once, on the machine running snakemake
# (a localrule), into model.weights_cache; the train and baseline jobs load that file and never touch the network,
# since compute nodes are often offline. A model.pretrained_path (a local file) needs no fetch.
import re

from msamil.config import cached_weights, method_settings

# weights file -> the model settings that need it (one entry per distinct backbone over all methods)
WEIGHT_MODELS = {
    str(path): method_settings(config, method)["model"]
    for method in config["methods"]
    for path in [cached_weights(method_settings(config, method)["model"])]
    if path is not None
}


localrules:
    fetch_weights,


rule fetch_weights:
    output:
        weights="{weights}",
    log:
        log_path("fetch_weights", "{weights}"),
    benchmark:
        bench_path("fetch_weights", "{weights}")
    wildcard_constraints:
        weights="|".join(re.escape(p) for p in WEIGHT_MODELS) or "(?!x)x",
    retries: 2
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        model=lambda wc: WEIGHT_MODELS[wc.weights],
    script:
        "../workflow/scripts/fetch_weights.py"
