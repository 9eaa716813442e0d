"""stormvl: STORM (arXiv 2503.04130) for long-video question answering."""
from .config import StormConfig
from .models.storm import StormForConditionalGeneration
from .pipeline import Answer, StormPipeline, load, parse_letter
from .processing import StormProcessor
from .video import VideoError, load_video

__version__ = "0.1.0"
__all__ = ["StormConfig", "StormForConditionalGeneration", "StormProcessor", "StormPipeline", "Answer", "load",
           "parse_letter", "load_video", "VideoError", "__version__"]
