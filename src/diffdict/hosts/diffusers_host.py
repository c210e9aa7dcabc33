"""Shared machinery of hosts backed by a diffusers pipeline (SDXL, SDXL Turbo, FLUX).

Loading (model id or local folder, dtype, device, optional NF4 quantization through
diffusers' bitsandbytes support), the denoising-step counter (a pre-hook on the denoiser:
one call per step, CFG being batched), and image conversion.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from diffdict.errors import DiffdictError
from diffdict.hosts.base import HostModel, check_device, parse_dtype

QUANTIZE_CHOICES = ("nf4",)


def nf4_config(dtype: torch.dtype, components: list[str]):
    """diffusers' pipeline-level BitsAndBytes NF4 config for ``components`` (lazy import)."""
    try:
        from diffusers.quantizers import PipelineQuantizationConfig
    except ImportError as error:  # pragma: no cover - version specific
        raise DiffdictError(f"this diffusers version has no pipeline quantization support: {error}") from None
    return PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype},
        components_to_quantize=components,
    )


class PipelineHost(HostModel):
    """A host over a diffusers pipeline; subclasses set the class names and defaults."""

    pipeline_class: str = ""  # attribute of ``diffusers``
    denoiser: str = "unet"  # the pipeline component called once per denoising step
    default_model: str = ""
    default_image_size: int = 1024
    quantize_components: list[str] = []
    cuda_dtype: str = "float16"  # compute dtype on CUDA when none is given (float32 on CPU)

    def __init__(self, model: str | None = None, pipeline: Any = None, dtype: str | torch.dtype | None = None,
                 device: str | None = None, quantize: str | None = None, image_size: int | None = None,
                 variant: str | None = None, offload: bool = False, path: str | None = None):
        """``model``: a hub id or local folder (``path`` is an alias); ``pipeline``: an
        already built pipeline of the right class (tests build tiny random ones)."""
        super().__init__()
        model = model or path
        self.device_name = check_device(device)
        if dtype is None and torch.device(self.device_name).type == "cuda":
            dtype = self.cuda_dtype
        self.torch_dtype = parse_dtype(dtype, self.device_name)
        if quantize is not None and quantize not in QUANTIZE_CHOICES:
            raise DiffdictError(f"unknown quantization {quantize!r}; expected one of {', '.join(QUANTIZE_CHOICES)}")
        self.quantize = quantize
        if pipeline is None:
            self.source = model or self.default_model
            if os.path.isdir(self.source):
                self.source = os.path.realpath(self.source)  # the same folder from any working directory
            pipeline = self._load(self.source, variant, offload)
        else:
            if quantize is not None:
                raise DiffdictError("quantize applies when loading a model; got an already built pipeline")
            self.source = model or "in-memory"
            pipeline = pipeline.to(self.device_name)
            if pipeline.dtype != self.torch_dtype:
                pipeline = pipeline.to(dtype=self.torch_dtype)
        self.pipe = pipeline
        for component in self.components().values():
            component.eval()  # inference: no dropout (models built from configs start in train mode)
        size = image_size or self.default_image_size
        self._size = (int(size), int(size)) if not isinstance(size, (tuple, list)) else (int(size[0]), int(size[1]))
        multiple = self.size_multiple()
        if self._size[0] % multiple or self._size[1] % multiple or min(self._size) <= 0:
            raise DiffdictError(f"image size {self._size[0]}x{self._size[1]} must be a positive multiple of {multiple} "
                                f"for {self.name}")
        self.pipe.set_progress_bar_config(disable=True)

    # -- loading ------------------------------------------------------------------------
    def _load(self, source: str, variant: str | None, offload: bool):
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype}
        if variant:
            kwargs["variant"] = variant
        if self.quantize == "nf4":
            if importlib.util.find_spec("bitsandbytes") is None:
                raise DiffdictError("quantize='nf4' needs bitsandbytes, which is not installed; "
                                    "install the extra: pip install 'diffdict[real]'")
            if torch.device(self.device_name).type != "cuda":
                raise DiffdictError("quantize='nf4' needs a CUDA device (bitsandbytes 4-bit kernels)")
            kwargs["quantization_config"] = nf4_config(self.torch_dtype, self.quantize_components)
        try:
            pipe = cls.from_pretrained(source, **kwargs)
        except (OSError, ValueError, EnvironmentError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DiffdictError(f"cannot load {self.name} model from {source!r}: {first}") from None
        if offload:
            pipe.enable_model_cpu_offload()
        elif self.quantize is None:
            pipe = pipe.to(self.device_name)
        else:  # quantized weights are placed at load; move the rest
            for name, component in pipe.components.items():
                if isinstance(component, nn.Module) and name not in self.quantize_components:
                    component.to(self.device_name)
        return pipe

    # -- HostModel ----------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return self._size

    def components(self) -> dict[str, nn.Module]:
        return {k: v for k, v in self.pipe.components.items() if isinstance(v, nn.Module)}

    def describe(self) -> dict:
        return {"host": self.name, "source": str(self.source),
                "dtype": str(self.torch_dtype).removeprefix("torch."),
                "quantize": self.quantize, "image_size": list(self._size)}

    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def _check_token_length(self, prompts: Sequence[str], tokenizer, limit: int, label: str) -> None:
        for i, prompt in enumerate(prompts):
            ids = tokenizer(prompt, truncation=False, add_special_tokens=True)["input_ids"]
            if len(ids) > limit:
                raise DiffdictError(
                    f"prompt {i} has {len(ids)} {label} tokens, more than the model's {limit}: {prompt[:80]!r}"
                )

    def pipeline_kwargs(self, steps: int, guidance: float) -> dict:
        return {"num_inference_steps": steps, "guidance_scale": guidance}

    def _generate(self, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                  on_step: Callable[[int], None] | None) -> np.ndarray:
        denoiser = getattr(self.pipe, self.denoiser)
        calls = {"n": 0}

        def count(module, args):
            self._step = calls["n"]
            calls["n"] += 1
            if on_step is not None:
                on_step(self._step)

        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        handle = denoiser.register_forward_pre_hook(count)
        try:
            out = self.pipe(
                prompt=prompts,
                height=self._size[0],
                width=self._size[1],
                generator=generators,
                output_type="np",
                **self.pipeline_kwargs(steps, guidance),
            )
        finally:
            handle.remove()
        if calls["n"] != steps:
            raise DiffdictError(f"{self.name}: the denoiser ran {calls['n']} times for {steps} steps")
        images = np.asarray(out.images, dtype=np.float32)
        return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
