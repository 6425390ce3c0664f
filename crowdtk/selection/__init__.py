"""Region selection (paper 3.4; Algorithm 1, lines 1 and 5): the budget (area or heads), RANDOM, NONE-OR-ALL,
MAX and MDC.

The parts, in the order a selection runs through them:

- :mod:`~crowdtk.selection.config`: :class:`SelectConfig` (the settings, validated), :class:`Selection` (the result),
  :data:`STRATEGIES`, every strategy's record (:func:`register_strategy` adds one), and the :class:`Job` a picker
  is given.
- :mod:`~crowdtk.selection.checks`: earlier rounds' files and strip vectors, read and refused when they do not fit
  the pool.
- :mod:`~crowdtk.selection.budget`: the candidate cells of an image and how many each image gets, counted in area.
- :mod:`~crowdtk.selection.heads`: or counted in heads, the vectors' predicted counts (``--budget-heads``).
- :mod:`~crowdtk.selection.streams`: the keyed random streams every random choice is drawn from.
- :mod:`~crowdtk.selection.strategies`: the pickers of random / none-or-all / max / mdc (each registered there), the
  regions records, :func:`select_regions`.
- :mod:`~crowdtk.selection.mdc` and :mod:`~crowdtk.selection.gmm`: MDC and the batched EM it fits.
- :mod:`~crowdtk.selection.image_list`: a published split's list of images (``--image-list``), matched to the pool.
- :mod:`~crowdtk.selection.run`: :func:`select_files`, from the files ``crowdtk select`` is given.
"""

from crowdtk.selection.budget import cell_grid, draw_whole_images, fill_area, round_half_up, spread_area
from crowdtk.selection.checks import Exclusion, check_exclusion, check_vectors, excluded_ids, read_exclusion
from crowdtk.selection.config import (
    CHUNK,
    ENGINES,
    SHAPES,
    STRATEGIES,
    WARMUP,
    Job,
    SelectConfig,
    Selection,
    Strategy,
    register_strategy,
)
from crowdtk.selection.gmm import gmm_numpy, gmm_sklearn, kmeans_plusplus
from crowdtk.selection.heads import plan_heads, spend_heads, spending_order
from crowdtk.selection.mdc import MdcPick, mdc_batch
from crowdtk.selection.run import SelectRun, select_files
from crowdtk.selection.strategies import select_regions
from crowdtk.selection.streams import image_keys, keyed_uniforms

__all__ = [
    "CHUNK",
    "ENGINES",
    "SHAPES",
    "STRATEGIES",
    "WARMUP",
    "Exclusion",
    "Job",
    "MdcPick",
    "SelectConfig",
    "SelectRun",
    "Selection",
    "Strategy",
    "cell_grid",
    "check_exclusion",
    "check_vectors",
    "draw_whole_images",
    "excluded_ids",
    "fill_area",
    "gmm_numpy",
    "gmm_sklearn",
    "image_keys",
    "keyed_uniforms",
    "kmeans_plusplus",
    "mdc_batch",
    "plan_heads",
    "read_exclusion",
    "register_strategy",
    "round_half_up",
    "select_files",
    "select_regions",
    "spend_heads",
    "spending_order",
    "spread_area",
]
