"""Baseline decode heads: stage-4 features -> head features X (`channels` wide)."""

from csfr.models.heads.aspp import ASPPHead
from csfr.models.heads.fcn import FCNHead
from csfr.models.heads.psp import PSPHead

HEADS = {"fcn": FCNHead, "deeplabv3": ASPPHead, "pspnet": PSPHead}

__all__ = ["HEADS", "ASPPHead", "FCNHead", "PSPHead"]
