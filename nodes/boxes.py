"""Box nodes: make EMPLACE_BOXES from text, turn any box type into masks, draw them."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..emplace.boxes import BOX_SPEC_HELP, Boxes, boxes_from_any, boxes_to_masks, check_boxes, parse_boxes
from ..emplace.images import channels_first, channels_last
from ..emplace.preview import draw_boxes

EmplaceBoxesType = io.Custom("EMPLACE_BOXES")
BboxType = io.Custom("BBOX")  # KJNodes and others: a list of (x, y, w, h)
BoundingBoxType = io.Custom("BOUNDING_BOX")  # newer ComfyUI core: {x, y, width, height} dicts


def box_input(optional: bool = False) -> io.MultiType.Input:
    return io.MultiType.Input("boxes", types=[EmplaceBoxesType, BboxType, BoundingBoxType], optional=optional,
                              tooltip="EMPLACE_BOXES, or a BBOX / BOUNDING_BOX from another pack (pixels)")


def image_size(image: torch.Tensor) -> tuple[int, int]:
    """(width, height) of a ComfyUI IMAGE [B, H, W, C]."""
    return int(image.shape[2]), int(image.shape[1])


def image_reference(image: torch.Tensor, cls) -> list[dict]:
    """The first frame saved to ComfyUI's temp folder, as the frontend's /view references it: the box
    editor and the proposal picker draw on it, and the workflow stores none of it."""
    return [dict(saved) for saved in ui.PreviewImage(image[:1], cls=cls).as_dict()["images"]]


class EmplaceBoxes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceBoxes",
            display_name="Emplace Boxes",
            category="Emplace/boxes",
            description="Boxes (label, prompt, position) for the Emplace nodes: drawn on the image in the node's "
                        "editor, or typed as text. The editor shows the connected image (or the last run's).",
            inputs=[
                io.String.Input("spec", multiline=True, default="red cube: 0.1 0.5 0.35 0.8\n"
                                "lamp: 0.55 0.2 0.8 0.7 | a brass desk lamp", tooltip=BOX_SPEC_HELP),
                io.Int.Input("width", default=512, min=8, max=16384, step=1,
                             tooltip="image width in pixels (ignored when an image is connected)"),
                io.Int.Input("height", default=512, min=8, max=16384, step=1,
                             tooltip="image height in pixels (ignored when an image is connected)"),
                io.Image.Input("image", optional=True, tooltip="take the size from this image"),
            ],
            outputs=[EmplaceBoxesType.Output(display_name="boxes")],
        )

    @classmethod
    def execute(cls, spec, width, height, image=None) -> io.NodeOutput:
        if image is not None:
            width, height = image_size(image)
        boxes = parse_boxes(spec, width, height)
        check_boxes(boxes)
        if image is None:
            return io.NodeOutput(boxes)
        return io.NodeOutput(boxes, ui={"emplace_background": image_reference(image, cls)})


class EmplaceBoxesToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceBoxesToMask",
            display_name="Emplace Boxes To Mask",
            category="Emplace/boxes",
            description="One mask per box (a batch), or their union.",
            inputs=[
                io.Image.Input("image", tooltip="the image the boxes belong to (gives the mask size)"),
                box_input(),
                io.Int.Input("grow", default=0, min=0, max=512, tooltip="grow each box by this many pixels"),
                io.Boolean.Input("union", default=True, tooltip="one mask of all boxes, or one mask per box"),
            ],
            outputs=[io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, image, boxes, grow, union) -> io.NodeOutput:
        width, height = image_size(image)
        boxes = boxes_from_any(boxes, width, height).clipped()
        if len(boxes) == 0:
            return io.NodeOutput(torch.zeros(1, height, width))
        masks = boxes_to_masks(boxes, grow=grow)
        return io.NodeOutput(masks.amax(0, keepdim=True) if union else masks)


class EmplaceDrawBoxes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceDrawBoxes",
            display_name="Emplace Draw Boxes",
            category="Emplace/boxes",
            description="The image with each box outlined and labelled (a preview).",
            inputs=[io.Image.Input("image"), box_input(),
                    io.Int.Input("line", default=2, min=1, max=32, tooltip="outline width in pixels")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, image, boxes, line) -> io.NodeOutput:
        width, height = image_size(image)
        boxes: Boxes = boxes_from_any(boxes, width, height)
        drawn = [draw_boxes(frame, boxes, line) for frame in channels_first(image)]
        return io.NodeOutput(channels_last(torch.stack(drawn)).to(image))
