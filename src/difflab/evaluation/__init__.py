"""Offline quality numbers: FID, KID, precision/recall, distance to the training set, class accuracy.

All of them compare images in the feature space of an *evaluator*: a small CNN classifier the
project trains on the dataset itself (``difflab train-evaluator``, ``models/classifier.py``), in
place of the Inception-v3 network behind published FIDs, or pytorch-fid's FID-Inception
(``models/inception.py``) for colour datasets. Why scores in the project's feature space differ
from published Inception FIDs: docs/metrics.md. One module per job, each importing only those
above it:

- ``metrics.py``: the maths on feature matrices (rows = images), each function next to its paper:
  ``frechet_distance`` (FID), ``kid``, ``precision_recall``, ``nearest_distances`` (the
  memorisation check); and ``format_table``, the report.
- ``images.py``: image sets as arrays: ``dataset_digest`` and ``subset`` of a dataset, and
  ``load_images`` of images made elsewhere (a ``.npz`` or a folder).
- ``evaluator.py``: the feature network: ``train_classifier``, ``save_evaluator`` and
  ``load_evaluator`` of the project's evaluator file, ``load_inception``, and what the
  ``Evaluator`` predicts of images (``class_accuracy``, ``class_coverage``).
- ``memorisation.py``: the memorisation check: ``nearest_neighbours`` (distances and indices,
  in memory-bounded blocks), ``memorisation_check`` (generated against held-out images' distances
  to the nearest training image, in pixels or features), ``save_memorisation_picture`` (the
  closest pairs) and ``format_memorisation``, its lines of the report.
- ``adherence.py``: prompt adherence of captioned canvases (``difflab.compose``), GenEval-style:
  ``read_canvases`` finds and reads the digits, ``judge`` and ``score_canvases`` check them
  against the captions, ``mnist_classifier`` reads digits with the MNIST evaluator.
- ``prompts.py``: a text model's prompt adherence: ``adherence_captions`` (seen and held-out
  prompts), ``prompt_request`` (one image per prompt, for the sampling plan),
  ``score_prompts`` (judge the images drawn), ``format_adherence`` (its table) and ``save_adherence_picture`` (images and verdicts).
- ``colour_prompts.py``: a colour emoji text model's prompts: ``colour_prompt_setup`` and
  ``colour_references`` (the real coloured shapes), ``grid_split`` (seen and never-seen
  "<colour> <shape>" prompts), ``grid_prompts`` (the prompts in turn),
  ``score_colour_prompts`` (is the drawn shape the asked colour), ``format_colour_prompts`` and
  ``save_colour_prompts_picture``.
- ``reference.py``: the real data: ``reference_datasets`` (the train and test splits),
  ``reference_statistics`` (their features, mean and covariance, cached beside the evaluator),
  and ``score_features``, generated features against them.

Every public name is re-exported here: ``from difflab import evaluation as ev`` then
``ev.score_features(...)``.
"""

from difflab.evaluation.adherence import (
    Detection,
    Verdict,
    adherence_summary,
    judge,
    mnist_classifier,
    read_canvases,
    relation_between,
    score_canvases,
)
from difflab.evaluation.colour_prompts import (
    ColourPromptReport,
    ColourReferences,
    colour_prompt_setup,
    colour_references,
    format_colour_prompts,
    grid_prompts,
    grid_split,
    name_colours,
    reference_accuracy,
    save_colour_prompts_picture,
    score_colour_prompts,
    shape_colours,
)
from difflab.evaluation.evaluator import (
    EVALUATOR_FORMAT,
    INCEPTION_FILE,
    INCEPTION_URL,
    NATIVE_SIZES,
    Evaluator,
    check_classes,
    class_accuracy,
    class_coverage,
    default_epochs,
    default_evaluator_path,
    load_evaluator,
    load_inception,
    match_channels,
    save_evaluator,
    train_classifier,
    train_evaluator_command,
)
from difflab.evaluation.images import dataset_digest, images_to_float, load_images, subset
from difflab.evaluation.memorisation import (
    COPY_QUANTILE,
    MemorisationCheck,
    format_memorisation,
    memorisation_check,
    nearest_neighbours,
    save_memorisation_picture,
)
from difflab.evaluation.metrics import (
    feature_statistics,
    fid_from_features,
    format_table,
    frechet_distance,
    kid,
    mmd2_unbiased,
    nearest_distances,
    polynomial_kernel,
    precision_recall,
)
from difflab.evaluation.prompts import (
    PromptReport,
    adherence_captions,
    format_adherence,
    prompt_request,
    save_adherence_picture,
    score_prompts,
)
from difflab.evaluation.reference import (
    HOLDOUT_EVERY,
    REFERENCE_FORMAT,
    Reference,
    reference_cache_path,
    reference_datasets,
    reference_statistics,
    score_features,
)

__all__ = [
    "COPY_QUANTILE",
    "EVALUATOR_FORMAT",
    "HOLDOUT_EVERY",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "NATIVE_SIZES",
    "REFERENCE_FORMAT",
    "ColourPromptReport",
    "ColourReferences",
    "Detection",
    "Evaluator",
    "MemorisationCheck",
    "PromptReport",
    "Reference",
    "Verdict",
    "adherence_captions",
    "adherence_summary",
    "check_classes",
    "class_accuracy",
    "class_coverage",
    "colour_prompt_setup",
    "colour_references",
    "dataset_digest",
    "default_epochs",
    "default_evaluator_path",
    "feature_statistics",
    "fid_from_features",
    "format_adherence",
    "format_colour_prompts",
    "format_memorisation",
    "format_table",
    "frechet_distance",
    "grid_prompts",
    "grid_split",
    "images_to_float",
    "judge",
    "kid",
    "load_evaluator",
    "load_images",
    "load_inception",
    "match_channels",
    "memorisation_check",
    "mmd2_unbiased",
    "mnist_classifier",
    "name_colours",
    "nearest_distances",
    "nearest_neighbours",
    "polynomial_kernel",
    "precision_recall",
    "prompt_request",
    "read_canvases",
    "reference_accuracy",
    "reference_cache_path",
    "reference_datasets",
    "reference_statistics",
    "relation_between",
    "save_adherence_picture",
    "save_colour_prompts_picture",
    "save_evaluator",
    "save_memorisation_picture",
    "score_canvases",
    "score_colour_prompts",
    "score_features",
    "score_prompts",
    "shape_colours",
    "subset",
    "train_classifier",
    "train_evaluator_command",
]
