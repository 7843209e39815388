"""Methods register themselves on import; importing this package makes all of them available."""

from scssl.methods.base import METHODS, Batch, LossOutput, MethodConfig, SSLMethod, get_method, register
from scssl.methods import barlow_twins, byol, hybrid, mae, moco, simclr, vicreg  # noqa: F401  (registration)

__all__ = ["METHODS", "Batch", "LossOutput", "MethodConfig", "SSLMethod", "get_method", "register"]
