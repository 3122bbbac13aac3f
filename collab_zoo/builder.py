"""Building a registered zoo model: timm's config resolution, our weight loading, timm's feature wrappers.

Every zoo entrypoint calls ``build_zoo_model``, so ``timm.create_model("dks_resnet50", pretrained=True)`` and
``collab_zoo.create_model(...)`` load weights the same (checked, safetensors-only) way.
"""
from typing import Any, Callable, Dict, Optional

from timm.models import build_model_with_cfg
from timm.models._features import FeatureGetterNet, FeatureHookNet
from timm.models._features_fx import FeatureGraphNet
from timm.models._builder import pretrained_cfg_for_features

from .weights import load_pretrained_weights

__all__ = ["build_zoo_model"]


FEATURE_CLASSES = ("getter", "hook", "fx")


def _wrap_features(model, out_indices, feature_cls):
    kind = (feature_cls or "getter").lower() if isinstance(feature_cls, str) or feature_cls is None else feature_cls
    if kind == "hook":
        wrapped = FeatureHookNet(model, out_indices=out_indices)
    elif kind == "getter":
        wrapped = FeatureGetterNet(model, out_indices=out_indices)
    elif kind == "fx":
        # timm's FX extractor: traces the eval forward and returns the feature_info modules' outputs.
        wrapped = FeatureGraphNet(model, out_indices=out_indices)
    elif isinstance(kind, type):
        wrapped = kind(model, out_indices=out_indices)
    else:
        raise ValueError(f"feature_cls must be one of {FEATURE_CLASSES} (or a wrapper class) for zoo models, got "
                         f"{feature_cls!r}.")
    wrapped.pretrained_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    wrapped.default_cfg = wrapped.pretrained_cfg
    return wrapped


def build_zoo_model(
        model_cls: Callable[..., Any],
        variant: str,
        pretrained: bool = False,
        pretrained_cfg: Optional[Any] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        cache_dir: Optional[str] = None,
        features_only: bool = False,
        out_indices: Any = None,
        feature_cls: Any = None,
        feature_cfg: Optional[Dict[str, Any]] = None,
        **kwargs,
):
    """Build ``model_cls(**kwargs)`` under the architecture ``variant``'s pretrained_cfg, load weights on request.

    ``features_only`` wraps the finished model in timm's FeatureGetterNet (``forward_intermediates``) or,
    with ``feature_cls='hook'``, FeatureHookNet, with ``'fx'``, FeatureGraphNet (timm's FX extractor);
    ``feature_cfg={"feature_cls": ..., "out_indices": ...}`` is timm's other spelling of the same. Wrapping
    happens after loading so the checkpoint's keys are those of the full model.
    """
    feature_cfg = dict(feature_cfg or {})
    feature_cls = feature_cls if feature_cls is not None else feature_cfg.pop("feature_cls", None)
    out_indices = out_indices if out_indices is not None else feature_cfg.pop("out_indices", None)
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained=False,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        **kwargs,
    )
    if pretrained:
        load_pretrained_weights(model, model.pretrained_cfg, cache_dir=cache_dir)
    if features_only:
        if out_indices is None:
            out_indices = tuple(range(len(model.feature_info)))
        model = _wrap_features(model, out_indices, feature_cls)
    return model
