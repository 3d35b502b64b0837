"""Adversarial attacks in [0, 1] pixel space, on the fused ops of `cwr_fast.ops`.

    atk = PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
    x_adv = atk(x, y)                      # torchattacks-style
    result = atk.run(x, y)                 # AttackResult(x_adv, pred, success), for the evaluator
    attacks = build_attacks("fgsm,pgd-20,tpgd-20:T=2,cw-30,aa", model, eps=0.3)   # from text
    AutoAttack(model, eps=8/255).run(x, y).broken_by   # which member fooled each image first
    threat_model("l2").project(x_adv, x, eps=0.5)       # the norm ball as an object (threat.py)
"""

from cwr_fast.attacks.apgd import APGD, APGDT
from cwr_fast.attacks.attack import Attack, attack_mode, check_inputs
from cwr_fast.attacks.autoattack import AutoAttack
from cwr_fast.attacks.fab import FAB, FABT
from cwr_fast.attacks.functional import perturb
from cwr_fast.attacks.gradient import CW, FGSM, PGD, PGDL2, GradientAttack, TemperaturePGD, choose_targets
from cwr_fast.attacks.result import AttackResult
from cwr_fast.attacks.spec import AttackSpec, AttackSpecError, build_attacks, parse_attack, parse_attacks
from cwr_fast.attacks.square import Square
from cwr_fast.attacks.threat import ThreatModel, threat_model
from cwr_fast.attacks.torchattacks_aa import TorchattacksAutoAttack

__all__ = ["APGD", "APGDT", "CW", "FAB", "FABT", "FGSM", "PGD", "PGDL2", "Attack", "AttackResult",
           "AttackSpec", "AttackSpecError", "AutoAttack", "GradientAttack", "Square", "TemperaturePGD",
           "ThreatModel", "TorchattacksAutoAttack", "attack_mode", "build_attacks", "check_inputs",
           "choose_targets", "parse_attack", "parse_attacks", "perturb", "threat_model"]
