"""The config files carry the paper's recipes: checked against the tables as printed in the paper
(docs/paper_targets.md, "Training recipes"), typed in here independently of configs/*.py."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"cfgtest_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# Adventurer Tables 8-10: (lr, lr unscaled?, wd, epochs, beta2, batch, warmup epochs, label smoothing, 3-Augment).
SMALL_MODELS = {"pretrain": (5e-4, False, 0.05, 300, 0.999, 1024, 5, 0.0, True),
                "intermediate": (5e-4, False, 0.05, 100, 0.999, 1024, 5, 0.0, True),
                "finetune": (1e-5, True, 0.1, 20, 0.999, 512, 5, 0.1, False)}
LARGE = {"pretrain": (2e-4, False, 0.3, 200, 0.95, 4096, 20, 0.0, True),
         "intermediate": (8e-4, False, 0.3, 50, 0.95, 4096, 20, 0.0, True),
         "finetune": (2e-5, True, 0.1, 50, 0.95, 512, 5, 0.1, False)}
# Drop-path rates: Tables 8-10 give S/B/L; Tiny's stage 2/3 rates are pixeltok's choice (0.1, 0.2).
DROP_PATH = {"tiny": (0.1, 0.1, 0.2), "small": (0.1, 0.2, 0.4), "base": (0.1, 0.4, 0.6), "large": (0.2, 0.4, 0.6)}


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
@pytest.mark.parametrize("stage", ["pretrain", "intermediate", "finetune"])
def test_adventurer_stage_recipes(size, stage):
    c = get_config(f"adventurer_{size}", f"p4,res=224,stage={stage}")
    table = LARGE if size == "large" else SMALL_MODELS
    lr, unscaled, wd, epochs, b2, batch, warmup, smoothing, three_aug = table[stage]
    assert (c.model_name, c.patch_size, c.image_size, c.stage) == (f"adventurer_{size}", 4, 224, stage)
    assert (c.lr, c.lr_scale_batch, c.wd, c.num_epochs, c.b1, c.b2) == (lr, 0 if unscaled else 512, wd, epochs, 0.9, b2)
    assert (c.batch_size, c.warmup_epochs, c.label_smoothing, c.three_augment) == (batch, warmup, smoothing, three_aug)
    assert c.model.drop_path == DROP_PATH[size][("pretrain", "intermediate", "finetune").index(stage)]
    # Every stage of the official code: mixup 0.8 / cutmix 1.0, warmup from 1e-6, cosine to 1e-5, bf16 compute.
    assert (c.mixup_alpha, c.cutmix_alpha, c.warmup_init_lr, c.end_lr, c.dtype) == (0.8, 1.0, 1e-6, 1e-5, "bfloat16")
    assert (c.dataset, c.num_classes, c.model.drop_path_schedule) == ("imagenet2012", 1000, "released_code")


@pytest.mark.parametrize("size,lr,scale,wd,epochs,b2,batch,warmup,dp", [
    ("tiny", 5e-4, 512, 0.05, 300, 0.999, 1024, 5, 0.1),      # DeiT recipe
    ("base", 5e-4, 512, 0.05, 300, 0.999, 1024, 5, 0.1),
    ("large", 1e-4, 256, 0.3, 200, 0.95, 4096, 20, 0.2),      # MAE supervised from-scratch ViT-L
])
def test_vit_recipes(size, lr, scale, wd, epochs, b2, batch, warmup, dp):
    c = get_config(f"vit_{size}", "p8,res=128")
    assert (c.model_name, c.patch_size, c.image_size) == (f"vit_{size}", 8, 128)
    assert (c.lr, c.lr_scale_batch, c.wd, c.num_epochs, c.b2, c.batch_size) == (lr, scale, wd, epochs, b2, batch)
    assert (c.warmup_epochs, c.model.drop_path, c.label_smoothing) == (warmup, dp, 0.1)
    assert c.model.drop_path_schedule == "linear"


@pytest.mark.parametrize("arg,crop,remat", [
    ("p16,res=64", 0.875, ""), ("p1,res=64", 0.875, "nothing_saveable"),      # 64²: always 0.875
    ("p16,res=224", 0.875, ""), ("p8,res=224", 1.0, ""), ("p2,res=224", 1.0, "nothing_saveable"),
    ("p16,res=448", 1.0, ""), ("p1,res=448", 1.0, "nothing_saveable"),       # above 224: 1.0
])
def test_eval_crop_and_remat(arg, crop, remat):
    c = get_config("adventurer_base", arg)
    assert (c.crop_ratio, c.remat) == (crop, remat)


def test_448_finetune_parses():
    c = get_config("adventurer_base", "p1,res=448,stage=finetune")
    assert (c.patch_size, c.image_size, c.stage, c.lr) == (1, 448, "finetune", 1e-5)


@pytest.mark.parametrize("name,arg,needle", [
    ("adventurer_base", "p1,res=128,stage=intermediate", "res=224"),
    ("adventurer_base", "stage=warmup", "warmup"),
    ("adventurer_base", "p5,res=64", "5"),
    ("vit_base", "p4,stage=finetune", "stage"),
    ("quickstart", "p4,resolution=64", "resolution"),
])
def test_bad_arguments(name, arg, needle):
    with pytest.raises(ValueError, match=needle):
        get_config(name, arg)


def test_quickstart():
    c = get_config("quickstart")
    assert (c.model_name, c.model.width, c.model.depth) == ("adventurer_tiny", 128, 4)
    assert (c.patch_size, c.image_size) == (8, 32)
    assert (c.total_steps, c.batch_size, c.lr, c.lr_scale_batch, c.dataset) == (500, 128, 4e-3, 0, "fashion_mnist")
