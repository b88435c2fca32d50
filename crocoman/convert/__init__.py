"""Converters from public datasets' on-disk layouts to crocoman shards (`crocoman-data convert`).

Each module in `CONVERTERS` exposes `add_arguments(parser)` (its own options; the common ones
come from `common.add_common_arguments`) and `convert(args) -> manifest`. Modules are imported
only when their dataset is converted, so one converter's optional decoder never burdens another.
"""

CONVERTERS: dict[str, str] = {
    # pretraining pairs: groups of one person over cameras x times
    "generic": "tools.convert.generic",
    "humbi": "tools.convert.humbi",
    "aist": "tools.convert.aist",
    "video": "tools.convert.video",
    # labelled crops for fine-tuning
    "threedpw": "tools.convert.threedpw",
    "freihand": "tools.convert.freihand",
    "densepose_coco": "tools.convert.densepose_coco",
    "hagrid": "tools.convert.hagrid",
}
