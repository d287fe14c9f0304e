"""pxpo-lite: reinforcement learning on diffusion models — DDPO and pixel-wise PXPO — as tutorials.

Start with ``notebooks/00_tour.ipynb``. The package holds the code each notebook would
otherwise repeat; each module's docstring names the notebook that introduces it.
"""
from . import world
from .models import load_segmenter, load_tiny_pipeline, build_tiny_pipeline
from .flow_models import TinyFlowPipeline, build_tiny_flow_pipeline, load_tiny_flow_pipeline
from .ddim import ddim_step_logprob
from .sampling import Trajectory, sample, step_log_prob, step_log_probs, rescore
from . import pixelwise
from .losses import ddpo_loss, pxpo_loss
from .trainer import TrainConfig, Trainer
from . import flow
from .flow import FlowTrainer, sde_step_logprob
from .flow_sampling import FlowTrajectory, sample_flow
from .feedback import FeedbackSession

__version__ = "0.2.0"


def __getattr__(name):
    """``pxpo_lite.HeatmapCanvas`` is imported on first use: the widget needs anywidget, the rest does not."""
    if name == "HeatmapCanvas":
        from .canvas import HeatmapCanvas

        return HeatmapCanvas
    raise AttributeError(f"module 'pxpo_lite' has no attribute {name!r}")
