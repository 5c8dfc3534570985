"""FERAtt (Facial Expression Recognition with Attention Net) in JAX/Flax Linen."""

__version__ = "0.1.0"

# Unified 8-class label order shared by every data source (FER+ order).
EXPRESSION_NAMES = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
