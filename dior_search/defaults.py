"""Every default a user can override, in one place: the CLI, the library and the server read
them from here."""

from collections.abc import Iterable
from pathlib import Path

# Models. The paper's model is the default for every collection but the generated `synthetic`
# one, which the bundled demo model `tiny` was trained on (and is all it understands).
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEMO_MODEL = "tiny"
DEMO_COLLECTION = "synthetic"
# Named in the error when the default model is not available: small enough for a CPU.
CPU_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_TEMPLATE = "describe"
DEFAULT_LAYER = -1
# Where a DIOR vector is read: the last input token (the paper's DIOR), or the generated answer's
# tokens (the reference code's other sources; see models.dior).
DEFAULT_SOURCE = "last_input"
DEFAULT_POSITION_SCHEME = "reference"
# The paper's code shrinks every image to at most 700 pixels on its longer side (Lanczos).
REFERENCE_MAX_SIDE = 700
DEFAULT_BATCH_SIZE = 8
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_CLIP_BATCH_SIZE = 32
DEFAULT_TEXT_ENCODER = "sentence-transformers/sentence-t5-base"
GENERATIVE_MAX_NEW_TOKENS = 16
# The model's own answers, read while embedding: greedy, at most this many tokens.
MAX_ANSWER_TOKENS = 8
# InDiReCT (Kobs et al., WACV 2023) as the reference repository runs it.
INDIRECT_COMPONENTS = 128
INDIRECT_LEARNING_RATE = 0.01
INDIRECT_PATIENCE = 100
INDIRECT_MAX_STEPS = 20_000

# Folders.
DEFAULT_INDEXES_DIR = Path("indexes")
# The environment variable that sets --indexes for every verb (e.g. an absolute path, so that
# commands run from any folder find the same indexes).
INDEXES_ENV = "DIOR_SEARCH_INDEXES"
DEFAULT_DATASETS_DIR = Path("datasets")
# The demo's own images: never the synthetic dataset that `index --dataset synthetic` reads.
DEFAULT_DEMO_DIR = Path("datasets/demo")

# Indexes.
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_MEMORY_BUDGET = 8 << 30
DEFAULT_INDEX_SPEC = "auto"
# A shard is rewritten without its deleted rows once they are more than this share of it.
COMPACT_THRESHOLD = 0.2
# An `index` run that would remove more than this share of an index asks first (--yes).
CONFIRM_REMOVAL_SHARE = 0.5

# The largest count or size an index's manifest records (an int64): a larger option is refused.
MAX_STORED_INT = (1 << 63) - 1

# Queries and serving.
DEFAULT_K = 10
MAX_UPLOAD_BYTES = 20 << 20
MAX_PIXELS = 50_000_000
REQUEST_TIMEOUT_S = 30.0
# The most results one served query may ask for, unless `serve --max-k` says otherwise
# (search.request.MAX_RESULTS bounds any request).
MAX_SERVED_RESULTS = 100


def default_model(collections: Iterable[str]) -> str:
    """The model used when none is named: `tiny` only when every collection is `synthetic`."""
    names = set(collections)
    return DEMO_MODEL if names and names <= {DEMO_COLLECTION} else DEFAULT_MODEL
