"""Normalizing flows: the layer contract, coupling, scaling and continuous layers, masks,
constructors."""

from .autoregressive import MADE, MaskedAutoregressive, masked_autoregressive_flow
from .base import Flow, Layer
from .conditioners import MLP
from .continuous import ContinuousLayer, VelocityMLP, continuous_flow, flow_matching_loss
from .coupling import AdditiveCoupling, AffineCoupling, Coupling
from .glow import ActNorm, LULinear, Permutation, glow_flow
from .masks import alternating_mask, checkerboard_mask
from .models import monotone_coupling_flow, neural_spline_flow, real_nvp, z2_nice
from .monotone import TanhSum
from .scaling import GlobalScaling
from .splines import CircularSpline, RationalQuadraticSpline, rational_quadratic
from .transforms import Additive, Affine, Elementwise, ElementwiseTransform
from .u1 import U1Coupling, u1_flow

__all__ = [
    "MADE",
    "MLP",
    "ActNorm",
    "Additive",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "CircularSpline",
    "ContinuousLayer",
    "Coupling",
    "Elementwise",
    "ElementwiseTransform",
    "Flow",
    "GlobalScaling",
    "LULinear",
    "Layer",
    "MaskedAutoregressive",
    "Permutation",
    "RationalQuadraticSpline",
    "TanhSum",
    "U1Coupling",
    "VelocityMLP",
    "alternating_mask",
    "checkerboard_mask",
    "continuous_flow",
    "flow_matching_loss",
    "glow_flow",
    "masked_autoregressive_flow",
    "monotone_coupling_flow",
    "neural_spline_flow",
    "rational_quadratic",
    "real_nvp",
    "u1_flow",
    "z2_nice",
]
