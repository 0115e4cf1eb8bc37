"""Adversarial searches: each constructor returns a per-example pure function.

``attack = advjax.attacks.NAME(logits_fn, **static_settings)`` gives
``attack(x, label, *, key=None, **per_example) -> AttackResult`` for ONE example; batch it with
``jax.vmap`` (per-example eps, target, c and key all map) and compile it with ``jax.jit``.

* ``fgsm``, ``pgd`` (L-infinity / L2, restarts), ``apgd`` (CE / DLR): fixed-budget attacks;
* ``lbfgs`` (Szegedy et al.'s box-constrained L-BFGS), ``cw_l2``, ``deepfool``, ``ddn`` (L2) and
  ``fmn`` (L0, L1, L2, L-infinity): minimum distortion;
* ``woods_l2``: Algorithm 1 of Woods et al. (``l2``, ``l2_min``, ``btr``; explanations);
* ``gaussian_noise``: the random control;
* ``bpda``: marks a non-differentiable part of a model (values kept, a surrogate's derivatives),
  so that every attack sees through it (masked-defence models: ``advjax.models.masked``);
* ``apgd_targeted``, ``fab``, ``square`` and the ``autoattack`` ensemble, with ``evaluate`` (data
  sets, sharded, resumable), ``min_eps`` (per-example minimal budget) and ``diagnostics``.

Shared vocabularies: ``advjax.attacks.projections`` (norms, L-infinity / L2 / L1 ball ∩ box
projections, ball sampling)
and ``advjax.attacks.losses`` (CE, margin, DLR and their targeted forms); ``advjax.attacks.targets``
picks the targets of the targeted APGD stages (AutoAttack's top logits, MultiTargeted's every
class, MALT's nearest linearised boundaries). Invalid input (label,
target, budget or image) is never a success: ``success=False``, NaN distortions, ``x_adv = x``
and ``aux["valid_input"] = False``; ``checked(jax.vmap(attack))`` raises instead.
"""

# The constructors are imported by name so that they shadow their modules of the same name
# (``advjax.attacks.pgd`` is the function; its module is ``sys.modules["advjax.attacks.pgd"]``).
from advjax.attacks import losses, projections
from advjax.attacks._boundary import checked
from advjax.attacks.apgd import apgd
from advjax.attacks.apgd_targeted import apgd_targeted
from advjax.attacks.autoattack import autoattack
from advjax.attacks.bpda import bpda
from advjax.attacks.cw import cw_l2
from advjax.attacks.ddn import ddn
from advjax.attacks.deepfool import deepfool
from advjax.attacks.evaluate import AutoAttackEvaluator, Evaluation, evaluate
from advjax.attacks.fab import fab
from advjax.attacks.fgsm import fgsm
from advjax.attacks.fmn import fmn
from advjax.attacks.lbfgs import lbfgs, random_wrong_target, second_most_likely_target
from advjax.attacks.min_eps import accuracy_vs_eps, min_eps
from advjax.attacks.noise import gaussian_noise
from advjax.attacks.pgd import pgd
from advjax.attacks.result import AttackResult, distortions, is_success, make_result
from advjax.attacks.square import square
from advjax.attacks.woods import woods_l2

__all__ = [
    "AttackResult",
    "apgd",
    "bpda",
    "checked",
    "cw_l2",
    "ddn",
    "deepfool",
    "distortions",
    "fgsm",
    "fmn",
    "gaussian_noise",
    "is_success",
    "lbfgs",
    "losses",
    "make_result",
    "pgd",
    "projections",
    "random_wrong_target",
    "second_most_likely_target",
    "woods_l2",
    "AutoAttackEvaluator",
    "Evaluation",
    "accuracy_vs_eps",
    "apgd_targeted",
    "autoattack",
    "evaluate",
    "fab",
    "min_eps",
    "square",
]
