"""One module per paper: its heads or layers, its loss, and its registered variants."""
from . import cldl, complementary, dcl, dks  # noqa: F401
