"""simdex engine: reads catalogs and answers queries. Never imports torch at import time."""
