"""`warmup` and `train`: fit a counter on labeled regions, optionally with CAP (paper 3.5).

The density loss (Eq. 2) is a squared error on labeled positions only: each labeled image
carries a mask at the output stride that is true on the cells lying wholly inside a
labeled region. Unlabeled positions get no target; with ``cap`` they learn through Crowd
Affinity Propagation, which mixes their features into the labeled positions' features.

Determinism and resuming: every random choice of epoch ``e`` comes from generators seeded
with ``(seed, e, …)``, and the full training state (weights, optimiser, epoch, best
validation MAE) is written atomically after every epoch. A run killed at any point and
resumed therefore repeats exactly the epochs an uninterrupted run would have made (it also
keeps the run's choice of CPU convolution backward, see speed_up_cpu_training).

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA). Each step's global batch is the same
as in a one-process run with ``batch_size × world_size``; each rank takes its share, the
loss is a mean of per-image losses, so gradients match the one-process run. Only rank 0
writes files.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from crowdtk.cap import CapCounter
from crowdtk.checkpoint import load_tensors, save_tensors, state_path
from crowdtk.data import read_image
from crowdtk.features import FeatureCache, FeatureMap
from crowdtk.memory import retain_freed_memory
from crowdtk.density import DensityConfig, density_map
from crowdtk.errors import CrowdtkError
from crowdtk.formats import CHECKPOINT, LabelsEntry, Provenance, file_digest, make_header, read_labels
from crowdtk.models import Counter, SameConv2d, build_model
from crowdtk.strips import STRIDE, model_size
from crowdtk.train_config import TrainConfig


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One labeled image at the working resolution, padded to a multiple of the stride."""

    id: str
    image: np.ndarray | None  # (H, W, 3) uint8, H and W multiples of 8; None once its features are cached
    target: np.ndarray  # (H/8, W/8) float32, heads per cell, labeled points only
    mask: np.ndarray  # (H/8, W/8) bool, cells lying wholly inside a labeled region
    heads_labeled: int = 0  # points inside the labeled regions
    heads_supervised: int = 0  # of those, the points inside supervised cells (they reach the target)
    features: "tuple[FeatureMap, FeatureMap] | None" = None  # frozen part's maps of the image and its mirror


def resize_for_model(image: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """Resize by ``scale`` (area interpolation when shrinking); return the image and x/y factors."""
    if scale == 1.0:
        return image, 1.0, 1.0
    height, width = image.shape[:2]
    new_w, new_h = model_size(width, scale), model_size(height, scale)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation), new_w / width, new_h / height


def pad_image(image: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    height, width = image.shape[:2]
    ph, pw = -height % stride, -width % stride
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    return image


def _cells_inside(start: int, stop: int, size: int, factor: float, cells: int) -> tuple[int, int]:
    """The output cells [first, last) that lie inside the pixel span [start, stop) of an image
    ``size`` px long, resized by ``factor``; a span reaching the image's end keeps the padding
    cell there. Region edges on the cell grid of this scale (strips.span_edges) are rounded to
    whole full-resolution pixels, so an edge within half a pixel of a cell edge counts as on it."""
    slack = 0.5 * factor / STRIDE + 1e-9
    first = math.ceil(start * factor / STRIDE - slack)
    last = cells if stop >= size else math.floor(stop * factor / STRIDE + slack)
    return first, min(last, cells)


def prepare_sample(entry: LabelsEntry, config: TrainConfig) -> Sample:
    image = read_image(entry.image)
    if image.shape[:2] != (entry.height, entry.width):
        raise CrowdtkError(
            f"{entry.image}: is {image.shape[1]}x{image.shape[0]}, the labels say {entry.width}x{entry.height}",
            "the image changed since labeling; re-run index/select/import",
        )
    image, sx, sy = resize_for_model(image, config.input_scale)
    image = pad_image(image)
    rows, cols = image.shape[0] // STRIDE, image.shape[1] // STRIDE
    target = np.zeros((rows, cols), dtype=np.float32)
    mask = np.zeros((rows, cols), dtype=bool)
    # sigma is in full-resolution pixels: the kernel is drawn on the resized image, where it is
    # sigma times the scale (drawing sigma = 4 after a 0.5 resize meant sigma = 8 at full size).
    density = DensityConfig(sigma=config.sigma * (sx + sy) / 2, stride=STRIDE)
    labeled = supervised = 0
    for region in entry.regions:
        # Supervise only the output cells lying wholly inside the region, and render the
        # region's heads with kernels cut at those cells' edges and renormalised, so the
        # target's sum over the masked cells is exactly the number of heads there. With
        # cells straddling the strip's edge, or kernels of heads outside the strip leaking in
        # unseen, a 10% strip's target came out 7% below the true density (measured on Part B
        # at --scale 0.5), and region-labeled training learned to undercount.
        inside = entry.points[region.contains(entry.points)]
        labeled += len(inside)
        r0, r1 = _cells_inside(region.y0, region.y1, entry.height, sy, rows)
        c0, c1 = _cells_inside(region.x0, region.x1, entry.width, sx, cols)
        if r1 <= r0 or c1 <= c0:
            continue
        points = inside * [sx, sy] - [c0 * STRIDE, r0 * STRIDE]
        box = (points[:, 0] >= 0) & (points[:, 0] < (c1 - c0) * STRIDE) & (points[:, 1] >= 0) & (points[:, 1] < (r1 - r0) * STRIDE)
        supervised += int(box.sum())
        target[r0:r1, c0:c1] = density_map(points[box], (r1 - r0) * STRIDE, (c1 - c0) * STRIDE, density)
        mask[r0:r1, c0:c1] = True
    return Sample(entry.id, image, target, mask, labeled, supervised)


def random_crop(sample: Sample, crop: int, flip: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A crop of ``crop`` px (whole image when 0) that contains a random labeled cell.

    Crops start on the stride grid so the stride-8 target is sliced exactly; a crop larger
    than the image is zero-padded with the mask false there.
    """
    rows, cols = sample.mask.shape
    if crop == 0:
        image, target, mask = sample.image, sample.target, sample.mask
    else:
        cells = crop // STRIDE
        ch, cw = min(cells, rows), min(cells, cols)
        labeled = np.flatnonzero(sample.mask)
        anchor = labeled[rng.integers(len(labeled))] if labeled.size else rng.integers(rows * cols)
        ar, ac = divmod(int(anchor), cols)
        top = int(rng.integers(max(0, ar - ch + 1), min(ar, rows - ch) + 1))
        left = int(rng.integers(max(0, ac - cw + 1), min(ac, cols - cw) + 1))
        image = sample.image[top * STRIDE:(top + ch) * STRIDE, left * STRIDE:(left + cw) * STRIDE]
        target = sample.target[top:top + ch, left:left + cw]
        mask = sample.mask[top:top + ch, left:left + cw]
        if (ch, cw) != (cells, cells):
            image = np.pad(image, ((0, (cells - ch) * STRIDE), (0, (cells - cw) * STRIDE), (0, 0)))
            target = np.pad(target, ((0, cells - ch), (0, cells - cw)))
            mask = np.pad(mask, ((0, cells - ch), (0, cells - cw)))
    if flip and rng.random() < 0.5:
        image, target, mask = image[:, ::-1], target[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(target), np.ascontiguousarray(mask)


def to_input(images: np.ndarray, model: Counter, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 → normalised (B, 3, H, W) float in channels-last memory."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return model.normalize(x).contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- the network being trained


class TrainNet(CapCounter):
    """The counter being trained, with CAP between its features and its output layer when ``cap``."""

    def __init__(self, counter: Counter, cap: bool, freeze: str = "none") -> None:
        super().__init__(counter)
        if not cap:
            self.cap = None
        # With a frozen front part the network is fed that part's cached features (crowdtk.features).
        self.freeze = freeze
        for module in counter.frozen_modules(freeze) if freeze != "none" else []:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor, labeled_mask: torch.Tensor | None = None) -> torch.Tensor:
        feat = self.counter.forward_features(x) if self.freeze == "none" else self.counter.decode(x, self.freeze)
        if labeled_mask is not None and self.cap is not None:
            feat = self.cap(feat, labeled_mask)
        return self.counter.head(feat)

    def weights(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensors: the counter's keys unprefixed, CAP's under ``cap.``."""
        tensors = dict(self.counter.state_dict())
        if self.cap is not None:
            tensors.update({f"cap.{k}": v for k, v in self.cap.state_dict().items()})
        return tensors

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str, counter_only: bool = False) -> None:
        counter = {k: v for k, v in tensors.items() if not k.startswith("cap.")}
        _load_strict(self.counter, counter, source)
        if self.cap is not None and not counter_only:
            _load_strict(self.cap, {k[4:]: v for k, v in tensors.items() if k.startswith("cap.")}, source)


def _load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    fix = "pass a checkpoint of the same model and configuration"
    own = module.state_dict()
    shapes = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    if shapes:  # load_state_dict raises a bare RuntimeError on these, even with strict=False
        k = shapes[0]
        raise CrowdtkError(f"{source}: weights do not fit the model ({k} is {tuple(tensors[k].shape)}, "
                           f"the model's is {tuple(own[k].shape)})", fix)
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CrowdtkError(
            f"{source}: weights do not fit the model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})", fix)


def speed_up_cpu_training(net: nn.Module, example: tuple[torch.Tensor, torch.Tensor], phase_split: bool | None = None) -> bool:
    """CPU settings for training ``net`` on batches shaped like ``example`` (input, labeled mask); returns
    whether the dilated depthwise convolutions use ``models.phase_split_conv`` in training.

    glibc would otherwise page-fault every large activation in afresh at each step
    (memory.retain_freed_memory). Whether the phase split pays depends on the CPU's oneDNN
    kernels, so it is timed on this batch shape (``phase_split=None``; a resumed run passes its
    first choice). Measured, lite with CAP, with vs without the split: on a 2-core AMD EPYC
    3.4x faster at 1 crop of 256 px and 9.9x at 2 of 192 px; on a 2-core Intel Xeon 0.82x at
    1 of 256 px and 0.85x at 8 of 128 px (bench/run.py's training stage compares the chosen
    settings with none)."""
    retain_freed_memory()
    convs = [m for m in net.modules() if isinstance(m, SameConv2d) and m._phased and m.weight.requires_grad]
    if not convs:
        return False
    if phase_split is None:
        phase_split = _phase_split_is_faster(net, convs, example)
    for m in convs:
        m.phase_split_backward = phase_split
    return phase_split


PHASE_SPLIT_MARGIN = 1.2


def example_batch(x_shape: tuple[int, ...], cells: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero input of ``x_shape`` and a mask of ``cells`` with one labeled strip (so that CAP, if
    any, has work as in training), for timing a training step."""
    x = torch.zeros(*x_shape).contiguous(memory_format=torch.channels_last)
    mask = torch.zeros(x_shape[0], *cells, dtype=torch.bool)
    mask[..., : max(1, cells[1] // 10)] = True
    return x, mask


def _phase_split_is_faster(net: nn.Module, convs: list[SameConv2d], example: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Best of two forward + backward passes each way, alternating, on a zero batch (about 6 training
    steps; gradients are cleared and no random state is used)."""
    x, mask = example
    net.train()
    freeze_batchnorm(net)
    best = {False: math.inf, True: math.inf}
    for split in (False, True, False, True, True, False):  # each way's first pass is slow (warm-up); the minimum ignores it
        for m in convs:
            m.phase_split_backward = split
        start = time.perf_counter()
        net(x, mask).sum().backward()
        best[split] = min(best[split], time.perf_counter() - start)
    net.zero_grad(set_to_none=True)
    # Only a clear gain switches it on: near a tie, timing noise would make runs of the same
    # command pick differently, and so differ in their float arithmetic.
    return best[True] * PHASE_SPLIT_MARGIN < best[False]


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); elsewhere it is emulated and slow."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2 on labeled cells: the squared error summed over every labeled cell of the batch, divided
    by the number of images in it. Every labeled cell weighs the same (Eq. 2 is a sum): a per-image
    mean over labeled cells made an image with one supervised column weigh as much as one with six."""
    err = (pred[:, 0].float() - target) ** 2 * mask
    return err.sum() / pred.shape[0]


def freeze_batchnorm(module: nn.Module) -> None:
    """Batch norm stays in eval mode: batches of 1–4 crops give useless statistics, and frozen
    statistics make a multi-process run compute what a one-process run computes."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# --------------------------------------------------------------------------- devices and processes


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise CrowdtkError("--device cuda but no CUDA device is available", "use --device cpu or auto")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise CrowdtkError(f"unknown --device '{name}'", "use auto, cpu or cuda")
    return torch.device("cpu")


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun job (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Processes":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            if device.type == "cpu":
                # Share the cores between the processes instead of oversubscribing them.
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", self.world))))

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch_dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


# --------------------------------------------------------------------------- the training run


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    val_mae: float | None  # None: no validation after this epoch (--val-every)
    best_val_mae: float
    improved: bool


@dataclass
class TrainResult:
    epochs_done: int
    best_val_mae: float
    val_on: str
    history: list[dict[str, float]] = field(default_factory=list)
    supervision: dict[str, int] = field(default_factory=dict)  # heads_labeled, heads_supervised
    features_computed: int = 0  # front-end maps computed (not found in the cache folder)


def split_validation(entries: list[LabelsEntry], config: TrainConfig) -> tuple[list[LabelsEntry], list[LabelsEntry], str]:
    """Hold out ``val_frac`` of the labeled images (by seed); with fewer than 5 images validate on the training images."""
    n_val = int(round(len(entries) * config.val_frac))
    if len(entries) < 5 or n_val == 0:
        return entries, entries, "train"
    order = np.random.default_rng([config.seed, 7919]).permutation(len(entries))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [entries[i] for i in train], [entries[i] for i in val], "held-out"


def checkpoint_header(provenance: Provenance, config: TrainConfig, counter: Counter, cap: bool, labels_sha256: str,
                      epochs_done: int, best_val_mae: float, val_on: str, supervision: dict[str, int] | None = None) -> dict[str, Any]:
    header = make_header(CHECKPOINT, provenance)
    header.update(
        model={"name": counter.name, "config": counter.config},
        cap=cap,
        inference_only=False,
        density_scale=config.density_scale,
        input_scale=config.input_scale,
        training=asdict(config),
        labels_sha256=labels_sha256,
        epochs_done=epochs_done,
        best_val_mae=best_val_mae,
        val_on=val_on,
        supervision=supervision or {},
    )
    return header


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def train(
    labels_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: TrainConfig,
    provenance: Provenance,
    *,
    init: str | None = None,
    resume: bool = False,
    device: str = "auto",
    on_epoch: Callable[[EpochReport], None] | None = None,
    prepared: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train and write the checkpoint to ``output``: the best epoch by validation MAE
    (``config.keep == "best"``) or the last one (``"last"``).

    ``on_epoch(report)`` and ``prepared(n)`` report progress.
    """
    config.validate()
    procs = Processes.from_env()
    dev = resolve_device(device, procs.local_rank)
    if config.cpu_bf16 and dev.type == "cpu" and not cpu_bf16_supported():
        raise CrowdtkError("--cpu-bf16: this CPU has no bfloat16 support in oneDNN (AVX512-BF16 or AMX)", "drop --cpu-bf16")
    procs.start(dev)
    if config.freeze != "none" and procs.world > 1:
        raise CrowdtkError("--freeze trains in one process (its cached features make a step cheap)", "run it without torchrun")
    _, entries = read_labels(labels_path)
    entries = [e for e in entries if e.regions]
    if not entries:
        raise CrowdtkError(f"{labels_path}: no labeled regions", "import labels first (crowdtk import)")
    labels_sha256 = file_digest(labels_path)
    train_entries, val_entries, val_on = split_validation(entries, config)

    # The network: ImageNet front end (or the --init checkpoint), CAP when asked for.
    init_header = None
    init_tensors: dict[str, torch.Tensor] = {}
    if init is not None:
        init_header, init_tensors = load_tensors(init)
        config = replace(config, model=init_header["model"]["name"], input_scale=init_header.get("input_scale", config.input_scale))
    torch.manual_seed(config.seed)
    if init_header is not None:
        counter = build_model(config.model, pretrained=False, **init_header["model"]["config"])
    else:
        counter = build_model(config.model, pretrained=config.pretrained, backbone_weights=config.backbone_weights)
    net = TrainNet(counter, config.cap, config.freeze)
    if init_header is not None:
        net.load_weights(init_tensors, str(init), counter_only=True)
    net.to(dev).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)

    # A resumed run continues from the state saved after its last finished epoch.
    start_epoch, best, history = 0, math.inf, []
    phase_split: bool | None = None
    state_file = state_path(output)
    if resume:
        if not state_file.exists():
            raise CrowdtkError(f"{state_file}: no training state to resume", "start without --resume")
        state_header, state_tensors = load_tensors(state_file)
        free = _MAY_CHANGE_ON_RESUME if config.lr_schedule == "constant" else ("feature_cache",)
        same = {k: v for k, v in asdict(config).items() if k not in free}
        saved = {k: v for k, v in (state_header.get("training") or {}).items() if k not in free}
        if state_header.get("labels_sha256") != labels_sha256 or saved != same:
            raise CrowdtkError(f"{state_file}: was made with other labels or settings", "resume with the same labels and options, or start anew")
        net.load_weights({k[6:]: v for k, v in state_tensors.items() if k.startswith("model.")}, str(state_file))
        _restore_optimizer(optimizer, {k: v for k, v in state_tensors.items() if k.startswith("optim.")}, state_header["optimizer_groups"])
        start_epoch, best, history = state_header["epochs_done"], state_header["best_val_mae"], state_header["history"]
        phase_split = state_header.get("cpu_phase_split")  # keep the first choice: the same arithmetic as an uninterrupted run

    # Targets and masks at the working resolution; with a frozen front part, its features
    # (computed once, or found in the cache folder) replace the images.
    cache = FeatureCache(counter, config.freeze, dev, config.feature_cache) if config.freeze != "none" else None

    def prepare(entry: LabelsEntry) -> Sample:
        sample = prepare_sample(entry, config)
        if cache is not None:
            sample.features = cache.maps(sample.image, entry.sha256, config.input_scale)
            sample.image = None
        if prepared:
            prepared(1)
        return sample

    samples = [prepare(e) for e in train_entries]
    val_samples = samples if val_on == "train" else [prepare(e) for e in val_entries]
    every = samples + (val_samples if val_samples is not samples else [])
    supervision = {"heads_labeled": sum(s.heads_labeled for s in every), "heads_supervised": sum(s.heads_supervised for s in every)}

    batches_of = _whole_image_batches if cache is not None else _crop_batches
    global_batch = config.batch_size * procs.world
    steps = len(batches_of(samples, global_batch, np.random.default_rng(0)))
    first = samples[0]
    if dev.type == "cpu":
        if cache is not None:
            h = first.features[0].load()
            example = example_batch((config.batch_size, *h.shape), first.mask.shape)
        else:
            side_h, side_w = (config.crop, config.crop) if config.crop else first.image.shape[:2]  # multiples of the stride
            example = example_batch((config.batch_size, 3, side_h, side_w), (side_h // STRIDE, side_w // STRIDE))
        phase_split = speed_up_cpu_training(net, example, phase_split)
        if procs.world > 1:  # every rank computes alike: the majority's choice
            phase_split = speed_up_cpu_training(net, example, procs.sum([float(phase_split)])[0] * 2 > procs.world)
    model: nn.Module = net
    if procs.world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                    find_unused_parameters=config.cap)
    if config.compile:
        model = torch.compile(model)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" or config.cpu_bf16)

    def header(epochs_done: int) -> dict[str, Any]:
        return checkpoint_header(provenance, config, counter, config.cap, labels_sha256, epochs_done, best, val_on, supervision)

    kept = start_epoch > 0 and Path(output).exists()  # a checkpoint of this run (or the run it resumes) is in output
    for epoch in range(start_epoch, config.epochs):
        # Every random choice of the epoch comes from (seed, epoch, ...): a resumed run repeats it.
        batches = batches_of(samples, global_batch, np.random.default_rng([config.seed, epoch]))
        model.train()
        freeze_batchnorm(model)
        loss_sum = 0.0
        for step, batch in enumerate(batches):
            picks = batch[procs.rank * config.batch_size:(procs.rank + 1) * config.batch_size]
            rngs = [np.random.default_rng([config.seed, epoch, step, int(i)]) for i in picks]
            if cache is not None:
                x, target, mask = _feature_batch([samples[i] for i in picks], config.flip, rngs, dev)
            else:
                x, target, mask = _crop_batch([samples[i] for i in picks], config, rngs, counter, dev)
            target = target * config.density_scale
            lr = config.lr_at(epoch * steps + step, config.epochs * steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                pred = model(x, mask)
            loss = masked_loss(pred, target, mask.float())
            if not torch.isfinite(loss):
                names = ", ".join(samples[i].id for i in picks)
                raise CrowdtkError(
                    f"training loss became {loss.item()} at epoch {epoch + 1} (step {step + 1}) on image(s) {names}",
                    (f"lower --lr (or --density-scale); the checkpoint of the {config.keep} finished epoch is kept in {output}"
                     if kept else "lower --lr (or --density-scale); this run wrote no checkpoint"),
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()

        # Validation reports progress; with keep="best" it also chooses the checkpoint.
        val_mae = validate(net, val_samples, config, dev, procs) if config.validates_after(epoch + 1) else None
        train_loss = procs.sum([loss_sum / max(steps, 1)])[0] / procs.world
        improved = val_mae is not None and val_mae < best
        if improved:
            best = val_mae
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae})
        if procs.writer:
            if config.keep == "last" or improved:
                save_tensors(output, net.weights(), header(epoch + 1))
                kept = True
            opt_tensors, groups = _optimizer_tensors(optimizer)
            state_header = header(epoch + 1)
            state_header.update(history=history, optimizer_groups=groups, state=True, cpu_phase_split=phase_split)
            save_tensors(state_file, {**{f"model.{k}": v for k, v in net.weights().items()}, **opt_tensors}, state_header)
        procs.barrier()
        if on_epoch:
            on_epoch(EpochReport(epoch + 1, config.epochs, train_loss, val_mae, best, improved))
    return TrainResult(epochs_done=config.epochs, best_val_mae=best, val_on=val_on, history=history,
                       supervision=supervision, features_computed=cache.computed if cache is not None else 0)


# Options a resumed run may change: its length (with a constant learning rate; a cosine schedule is
# laid over the whole run), and where the cached features are kept.
_MAY_CHANGE_ON_RESUME = ("epochs", "feature_cache")


def _crop_batches(samples: list[Sample], global_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch of random crops: the images in a random order, wrapped around so that every batch is full."""
    steps = math.ceil(len(samples) / global_batch)
    order = np.resize(rng.permutation(len(samples)), steps * global_batch)
    return [order[i * global_batch:(i + 1) * global_batch] for i in range(steps)]


def _whole_image_batches(samples: list[Sample], global_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch of whole images: a batch holds images of one size (cached maps are not cropped),
    in a random order; the number of batches depends only on the sizes, not on the seed."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in rng.permutation(len(samples)).tolist():
        by_size.setdefault(samples[i].mask.shape, []).append(i)
    batches = [np.array(group[j:j + global_batch]) for group in by_size.values() for j in range(0, len(group), global_batch)]
    return [batches[k] for k in rng.permutation(len(batches))]


def _crop_batch(batch: list[Sample], config: TrainConfig, rngs: list[np.random.Generator], counter: Counter,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    crops = [random_crop(sample, config.crop, config.flip, rng) for sample, rng in zip(batch, rngs)]
    if config.crop == 0 and len({c[0].shape for c in crops}) > 1:
        raise CrowdtkError("images of different sizes cannot share a batch without cropping", "pass --crop, or --batch-size 1")
    x = to_input(np.stack([c[0] for c in crops]), counter, device)
    target = torch.from_numpy(np.stack([c[1] for c in crops])).to(device)
    mask = torch.from_numpy(np.stack([c[2] for c in crops])).to(device)
    return x, target, mask


def _feature_batch(batch: list[Sample], flip: bool, rngs: list[np.random.Generator],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole cached maps; a flipped image takes its mirror's map and mirrored targets."""
    flips = [flip and rng.random() < 0.5 for rng in rngs]
    x = torch.stack([s.features[int(f)].load() for s, f in zip(batch, flips)]).to(device).float()
    target = np.stack([s.target[:, ::-1] if f else s.target for s, f in zip(batch, flips)])
    mask = np.stack([s.mask[:, ::-1] if f else s.mask for s, f in zip(batch, flips)])
    return (x.contiguous(memory_format=torch.channels_last), torch.from_numpy(np.ascontiguousarray(target)).to(device),
            torch.from_numpy(np.ascontiguousarray(mask)).to(device))


@torch.inference_mode()
def validate(net: TrainNet, samples: list[Sample], config: TrainConfig, device: torch.device, procs: Processes) -> float:
    """MAE of the count inside each validation image's labeled regions (whole image, no CAP)."""
    counter = net.counter
    counter.eval()
    errors, n = 0.0, 0
    for sample in samples[procs.rank::procs.world]:
        if sample.features is not None:
            x = sample.features[0].load()[None].to(device).float()
        else:
            x = to_input(sample.image[None], counter, device)
        pred = net(x)[0, 0].float().cpu().numpy() / config.density_scale
        errors += abs(float((pred * sample.mask).sum()) - float((sample.target * sample.mask).sum()))
        n += 1
    errors, n = procs.sum([errors, float(n)])
    return errors / max(n, 1)
