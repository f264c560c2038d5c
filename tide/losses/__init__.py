"""Student losses computed from the cache (docs/design.md#losses): fp32, per-item terms, one normaliser.

Families: ``ce`` (BD3LM cross-entropy), ``kl`` (forward / reverse KL against a top-k teacher), ``tidal``
(TIDAL interpolated KL), ``calm`` (CALM-family chunk losses). ``LOSSES`` maps each mode name to its entry;
``parse_mode("tidal+kl")`` composes modes, and ``combine_losses`` adds the distillation terms to CE.
"""

from tide.losses.calm import (
    DEFAULT_CHUNK_TEMPERATURE,
    calm_loss,
    calm_terms,
    log_prob_pair,
    tidal_calm_loss,
    tidal_calm_terms,
)
from tide.losses.ce import ce_loss, ce_terms
from tide.losses.common import masked_mean
from tide.losses.kl import kl_loss, kl_terms, reverse_kl_loss, reverse_kl_terms
from tide.losses.registry import (
    DEFAULT_VOCAB_TEMPERATURE,
    LOSSES,
    CEInputs,
    ChunkInputs,
    LossEntry,
    LossOptions,
    VocabInputs,
    combine_losses,
    parse_mode,
    required_targets,
    vocab_losses,
)
from tide.losses.tidal import TidalSchedule, midrange_weight, tidal_loss, tidal_terms

__all__ = [
    "DEFAULT_CHUNK_TEMPERATURE",
    "DEFAULT_VOCAB_TEMPERATURE",
    "LOSSES",
    "CEInputs",
    "ChunkInputs",
    "LossEntry",
    "LossOptions",
    "TidalSchedule",
    "VocabInputs",
    "calm_loss",
    "calm_terms",
    "ce_loss",
    "ce_terms",
    "combine_losses",
    "kl_loss",
    "kl_terms",
    "log_prob_pair",
    "masked_mean",
    "midrange_weight",
    "parse_mode",
    "required_targets",
    "reverse_kl_loss",
    "reverse_kl_terms",
    "tidal_calm_loss",
    "tidal_calm_terms",
    "tidal_loss",
    "tidal_terms",
    "vocab_losses",
]
