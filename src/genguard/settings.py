"""Kedro project settings."""

from omegaconf.resolvers import oc

# ``${oc.env:VAR,default}`` in parameters and mlflow.yml (Kedro enables it only for credentials).
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"oc.env": oc.env},
    # conf/gpu and conf/test override single keys (pin_clip.train.lr), not whole method blocks.
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
}
