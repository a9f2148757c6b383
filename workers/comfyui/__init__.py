"""Image, video and lip-sync stages on a ComfyUI server, driven by workflow templates (kind "comfyui").

Studios build their pipelines in ComfyUI and export them in API format ("Export (API)"); the farm
fills in what changes per action (prompt, seed, size, frames, uploaded images) at nodes the
settings name, and post-processes what comes back into exactly what the embedded backends make,
so the rest of the farm cannot tell the difference: keyframes are exactly width x height PNGs, a
sheet also yields an RGBA "figure", and clips are re-encoded with ``workers.video.motion``'s
encoder settings, so they concatenate by stream copy with every other clip.

Talking shots (workers.comfyui.talk): a ``"stage": "lipsync"`` backend runs a lip-sync workflow
(LatentSync and the like) on the shot's clip and dialogue track; a video backend with ``"speech":
true`` runs an audio-driven image-to-video workflow (Wan S2V, InfiniteTalk) that makes the clip
with the character already speaking, and returns its sound and where each line is said. Their
clips must come back at exactly the planned size, frame rate and frame count: they are never
retimed. deploy/comfyui/ holds example workflows and their settings.

Generation on a GPU server is slow and paid for, so a job must survive the farm: the prompt id is
chosen here and saved in the farm's ``JobRecord`` before it is submitted (ComfyUI takes a client's
``prompt_id``; an older one that picks its own gets that saved right after), and a run that finds a
saved id waits on that job instead of submitting again. Only when the server no longer knows the
id (not in /history, not in /queue: it restarted) is the workflow submitted anew, and the result's
meta says so.

The template files are read once, when the backend is built; their content (not their path) and
the input/output mapping enter ``version``, so editing a workflow changes every key it makes while
moving the server (``base_url``) changes none.

Example settings (FARM_BACKENDS)::

    {"comfy-img": {"kind": "comfyui", "stage": "image", "base_url": "http://comfy:8188",
                   "workflows": {"sheet": "/etc/farm/sheet.json", "keyframe": "/etc/farm/keyframe.json"},
                   "inputs": {"keyframe": {"prompt": ["6", "text"], "seed": ["3", "seed"],
                                           "width": ["5", "width"], "height": ["5", "height"],
                                           "figure1": ["10", "image"]},
                              "sheet": {"prompt": ["6", "text"], "seed": ["3", "seed"]}},
                   "outputs": {"keyframe": {"keyframe": "9"}, "sheet": {"sheet": "9"}}}}
"""

from workers.comfyui.backend import ComfyUI
from workers.comfyui.figures import derive_figure, key_out_background
from workers.comfyui.outputs import gpu_seconds
from workers.comfyui.workflow import KIND, ComfyUISettings, action_seed, load_templates, prompt_text

__all__ = [
    "KIND",
    "ComfyUI",
    "ComfyUISettings",
    "action_seed",
    "derive_figure",
    "gpu_seconds",
    "key_out_background",
    "load_templates",
    "prompt_text",
]
