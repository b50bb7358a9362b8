"""The AIGI manifest: image rows grouped by the ``generator`` that made them (reals carry the
subset they were published with, so per-generator metrics compare a generator's fakes against that
subset's reals, as the published protocols do).

``origin`` (optional) names the photo an embedded-default crop was cut from: crops of one photo are
strongly correlated, so no photo may feed two splits; validation checks it along with file hashes.
"""

from genguard.data.manifest import image_schema

AIGI_SCHEMA = image_schema("aigi", {"generator": "str"}, group_column="generator",
                           leakage_groups=("sha256", "origin"), sort_by=("split", "generator", "label", "path"))
GROUP = AIGI_SCHEMA.group_column
