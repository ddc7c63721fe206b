"""Proposal nodes: load a location model, propose boxes for an object on a background, pick some.

propose -> pick -> inpaint: Emplace Propose Locations samples plausible boxes for a label
(emplace/location/sample.py does the work), Emplace Select Boxes keeps the ones chosen by
index, and Emplace Iterative Inpaint paints the object into them.

Location model files live in ComfyUI's `models/location_models` folder (registered here, at
import, with folder_paths): `name.safetensors` with its config `name.json` beside it. The
embedded default (emplace/defaults/location/) is always listed first.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..emplace.boxes import INDEX_HELP, Box, Boxes, boxes_to_masks, parse_indices
from ..emplace.images import channels_first, channels_last
from ..emplace.location.model import (
    DEFAULT_MODEL,
    LocationModel,
    LocationModelError,
    config_path,
    load_location_model,
)
from ..emplace.location.sample import propose
from ..emplace.preview import density_map, draw_boxes, overlay_heat
from ..emplace.weights import WeightsFileError
from .boxes import EmplaceBoxesType, image_reference, image_size
from .file_cache import FileCache, file_stamp

LocationModelType = io.Custom("EMPLACE_LOCATION_MODEL")

FOLDER = "location_models"
DEFAULT_NAME = "emplace-scene-world (embedded default)"
EXTENSIONS = {".safetensors"}
MIN_SIZE = 0.06  # about 1/16 of the image side: at 0 a box may be one bin (1/128 of the side, 4 px at 512) thin


def register_folder() -> None:
    """`models/location_models` in folder_paths, .safetensors only (the .json configs beside them are not listed).

    Paths registered before the pack loads (extra_model_paths.yaml `location_models: ...`) are kept.
    """
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


register_folder()


def model_names() -> list[str]:
    return [DEFAULT_NAME] + [n for n in folder_paths.get_filename_list(FOLDER) if n != DEFAULT_NAME]


def model_path(model_name: str) -> Path:
    if model_name == DEFAULT_NAME:
        if not DEFAULT_MODEL.is_file():
            raise LocationModelError(
                f"the embedded default location model is not in this copy of Emplace ({DEFAULT_MODEL} is missing); "
                f"make it with `python -m trainer location default`, or choose a model in models/{FOLDER}")
        return DEFAULT_MODEL
    path = folder_paths.get_full_path(FOLDER, model_name)
    if path is None:
        raise FileNotFoundError(f"location model '{model_name}' is not in ComfyUI's {FOLDER} folder "
                                f"({', '.join(folder_paths.get_folder_paths(FOLDER))})")
    return Path(path)


_cache: FileCache[LocationModel] = FileCache(size=4)  # location models are small (a few MB); keep the last few


def load_cached(model_name: str) -> LocationModel:
    """The model for a combo entry, loaded once per version of the file and of its config beside it."""
    path = model_path(model_name)
    return _cache.get(path, load_checked, companions=[config_path(path)])


def load_checked(path: Path) -> LocationModel:
    try:
        return load_location_model(path)
    except (LocationModelError, WeightsFileError):
        raise  # the library's own sentence says what is wrong with the file
    except Exception as e:  # a config that parses but does not build a model (bad sizes, bad types)
        raise LocationModelError(f"{path.name} could not be built as a location model from "
                                 f"{config_path(path).name}: {type(e).__name__}: {e}") from e


def describe(model: LocationModel, model_name: str) -> str:
    c = model.config
    labels = model.labels
    vocabulary = (f"{len(labels)} labels: {', '.join(labels)}" if labels
                  else "open vocabulary (CLIP text): any label")
    return (f"{model_name}: {c.layers} layers, width {c.width}, {c.bins} bins per axis, "
            f"{c.image_encoder.get('kind')} image encoder at {c.image_size} px\n{vocabulary}")


class EmplaceLoadLocationModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceLoadLocationModel",
            display_name="Emplace Load Location Model",
            category="Emplace/location",
            description="Load a location model (an autoregressive box model that proposes where an object of a "
                        "class fits on a background). The embedded scene-world default is listed first.",
            inputs=[
                io.Combo.Input("model_name", options=model_names(), default=DEFAULT_NAME,
                               tooltip=f"a .safetensors file (with its .json config beside it) in "
                                       f"models/{FOLDER}, or the embedded default"),
            ],
            outputs=[
                LocationModelType.Output(display_name="location_model"),
                io.String.Output(display_name="info", tooltip="the model's size and the labels it knows"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name) -> tuple:
        try:
            path = model_path(model_name)
            return file_stamp(path, [config_path(path)])
        except (LocationModelError, FileNotFoundError):
            return (model_name,)  # execute says what is missing

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        model = load_cached(model_name)
        info = describe(model, model_name)
        return io.NodeOutput(model, info, ui=ui.PreviewText(info))


class EmplaceProposeLocations(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceProposeLocations",
            display_name="Emplace Propose Locations",
            category="Emplace/location",
            description="Sample plausible boxes for an object of a class on a background, de-duplicated (NMS) and "
                        "ordered by the model's likelihood, best first. The preview shows where all the samples "
                        "fell (a heat map) and the returned boxes, numbered for Emplace Select Boxes.",
            inputs=[
                LocationModelType.Input("location_model"),
                io.Image.Input("image", tooltip="the background (of a batch, the first frame is used)"),
                io.String.Input("label", default="large cube",
                                tooltip="the object's class, one the model knows (case, spaces, hyphens and "
                                        "underscores do not matter: 'large cube' = 'large_cube')"),
                io.Int.Input("count", default=4, min=1, max=256,
                             tooltip="boxes to return (fewer when NMS leaves fewer)"),
                io.Int.Input("samples", default=100, min=1, max=4096, tooltip="boxes drawn before NMS"),
                io.Float.Input("temperature", default=1.0, min=0.01, max=5.0, step=0.05,
                               tooltip="below 1: the likeliest places; above 1: more varied ones"),
                io.Int.Input("top_k", default=0, min=0, max=1024,
                             tooltip="draw each coordinate from its k likeliest bins only (0: all)"),
                io.Float.Input("top_p", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="draw each coordinate from the likeliest bins holding this much "
                                       "probability (1: all)"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Float.Input("min_size", default=MIN_SIZE, min=0.0, max=1.0, step=0.01,
                               tooltip=f"each box side at least this fraction of the image side; the default "
                                       f"{MIN_SIZE} (about 1/16) keeps out sliver boxes, 0 allows boxes 1/128 of "
                                       f"the side thin"),
                io.Float.Input("max_size", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="each box side at most this fraction of the image side"),
                io.Float.Input("nms_iou", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="drop a box overlapping a likelier one by more than this IoU (1: keep all)"),
                io.Mask.Input("region", optional=True,
                              tooltip="where boxes may go (1 = allowed; every box lies wholly inside); the "
                                      "first mask of a batch, the image's size"),
            ],
            outputs=[
                EmplaceBoxesType.Output(display_name="boxes",
                                        tooltip="best first; label, prompt (the label in words) and score "
                                                "(log-likelihood) filled in"),
                io.Mask.Output(display_name="masks", tooltip="one mask per box, in the same order"),
                io.Image.Output(display_name="preview",
                                tooltip="the background, a heat map of every sample, the boxes numbered"),
            ],
        )

    @classmethod
    def execute(cls, location_model, image, label, count, samples, temperature, top_k, top_p, seed, min_size,
                max_size, nms_iou, region=None) -> io.NodeOutput:
        width, height = image_size(image)
        name = location_model.check_label(label)  # an unknown label: the library's list of the known ones
        frame = channels_first(image[0, ..., :3]).float().cpu()
        allowed = None
        if region is not None:
            allowed = (region[0] if region.dim() == 3 else region).float().cpu()
        bar = comfy.utils.ProgressBar(2)
        comfy.model_management.throw_exception_if_processing_interrupted()
        proposals = propose(location_model, frame, name, samples, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, region=allowed, min_size=min_size, max_size=max_size, nms_iou=nms_iou)
        bar.update(1)
        prompt = name.replace("_", " ")
        boxes = Boxes(tuple(Box(*(float(v) for v in b), label=name, prompt=prompt, score=float(s))
                            for b, s in zip(proposals.boxes[:count], proposals.scores[:count])), width, height)
        masks = boxes_to_masks(boxes)
        heat = overlay_heat(frame, density_map(proposals.samples, width, height))
        numbered = boxes.with_boxes(replace(b, label=str(i), prompt="") for i, b in enumerate(boxes))
        preview = draw_boxes(heat, numbered, line=max(2, min(width, height) // 256))
        bar.update(1)
        # the node's picker draws these on the background; a click selects the index in Emplace Select Boxes
        picker = {"background": image_reference(image, cls), "width": width, "height": height,
                  "boxes": [[*b.xyxy, b.score] for b in boxes]}
        return io.NodeOutput(boxes, masks, channels_last(preview)[None].to(image), ui={"emplace_proposals": [picker]})


class EmplaceSelectBoxes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceSelectBoxes",
            display_name="Emplace Select Boxes",
            category="Emplace/boxes",
            description="Keep some of the boxes by index (proposals come best first: '0' is the best), optionally "
                        "giving them another label or prompt. The pick step of propose -> pick -> inpaint.",
            inputs=[
                EmplaceBoxesType.Input("boxes"),
                io.String.Input("indices", default="0", tooltip=INDEX_HELP),
                io.String.Input("label", default="", tooltip="a new label for the chosen boxes (empty: keep theirs)"),
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="a new prompt for the chosen boxes (empty: keep theirs)"),
            ],
            outputs=[EmplaceBoxesType.Output(display_name="boxes")],
        )

    @classmethod
    def execute(cls, boxes, indices, label, prompt) -> io.NodeOutput:
        chosen = [boxes[i] for i in parse_indices(indices, len(boxes))]
        changes = {k: v.strip() for k, v in (("label", label), ("prompt", prompt)) if v.strip()}
        return io.NodeOutput(boxes.with_boxes(replace(b, **changes) for b in chosen))
