"""``torchhouse.config``: config-driven training (`torchhouse.frontends.config`), under its public name.

``th.config.load_run`` (`torchhouse.frontends.serving.load_run`) and
``from torchhouse.config import ...`` keep working from here.
"""

from torchhouse.frontends.config import *  # noqa: F403
from torchhouse.frontends.config import __all__ as _config_names
from torchhouse.frontends.serving import load_run

__all__ = [*_config_names, "load_run"]
