"""Every default a user can override, in one place: the CLI, the library and the server read
them from here."""

from pathlib import Path

# Models.
DEFAULT_MODEL = "tiny"
DEFAULT_TEMPLATE = "describe"
DEFAULT_LAYER = -1
DEFAULT_POSITION_SCHEME = "reference"
# The paper's code shrinks every image to at most 700 pixels on its longer side (Lanczos).
REFERENCE_MAX_SIDE = 700
DEFAULT_BATCH_SIZE = 8
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_CLIP_BATCH_SIZE = 32
DEFAULT_TEXT_ENCODER = "sentence-transformers/sentence-t5-base"
GENERATIVE_MAX_NEW_TOKENS = 16

# Folders.
DEFAULT_INDEXES_DIR = Path("indexes")
DEFAULT_DATASETS_DIR = Path("datasets")
# The demo's own images: never the synthetic dataset that `index --dataset synthetic` reads.
DEFAULT_DEMO_DIR = Path("datasets/demo")

# Indexes.
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_MEMORY_BUDGET = 8 << 30
DEFAULT_INDEX_SPEC = "auto"

# Queries and serving.
DEFAULT_K = 10
MAX_UPLOAD_BYTES = 20 << 20
MAX_PIXELS = 50_000_000
REQUEST_TIMEOUT_S = 30.0
MAX_K = 100
