"""Converters from public datasets' on-disk layouts to crocoman shards (`crocoman-data convert`).

Each module in `CONVERTERS` exposes `add_arguments(parser)` (its own options; the common ones
come from `common.add_common_arguments`) and `convert(args) -> manifest`. Modules are imported
only when their dataset is converted, so one converter's optional decoder never burdens another.
"""

CONVERTERS: dict[str, str] = {
    # pretraining pairs: groups of one person over cameras x times
    "generic": "crocoman.convert.generic",
    "humbi": "crocoman.convert.humbi",
    "aist": "crocoman.convert.aist",
    "video": "crocoman.convert.video",
    # labelled crops for fine-tuning
    "threedpw": "crocoman.convert.threedpw",
    "freihand": "crocoman.convert.freihand",
    "densepose_coco": "crocoman.convert.densepose_coco",
    "hagrid": "crocoman.convert.hagrid",
}
