"""scssl: self-supervised learning for single-cell RNA-seq on AnnData."""

__version__ = "0.1.0"

from scssl.data import CellData, DataError  # noqa: E402
from scssl.methods import METHODS, get_method, register  # noqa: E402
from scssl.model import SSLModel  # noqa: E402
from scssl import pl, pp, tl  # noqa: E402

__all__ = ["SSLModel", "CellData", "DataError", "METHODS", "get_method", "register", "pp", "tl", "pl", "__version__"]
