"""stormvl: STORM (arXiv 2503.04130) for long-video question answering."""
from .config import StormConfig
from .errors import StormError, VideoError
from .models.storm import StormForConditionalGeneration
from .pipeline import Answer, StormPipeline, load
from .processing import StormProcessor, parse_letter
from .video import load_video

__version__ = "0.1.0"
__all__ = ["StormConfig", "StormForConditionalGeneration", "StormProcessor", "StormPipeline", "Answer", "load",
           "parse_letter", "load_video", "StormError", "VideoError", "__version__"]
