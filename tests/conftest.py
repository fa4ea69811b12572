import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
KVS = ROOT.parent/"shared"/"data"/"kvs"/"kvs_data_new.json"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@pytest.fixture(scope="session")
def lm():
    "The embedded SmolLM2-135M-Instruct, loaded once per test session."
    from s2b.models import load_model
    return load_model("embedded")

@pytest.fixture(scope="session")
def kvs_path():
    if not KVS.exists(): pytest.skip(f"the paper's KVS survey is not beside the checkout ({KVS})")
    return KVS

@pytest.fixture
def random_adapters(lm):
    "Save one random LoRA adapter (r 4 on q_proj and v_proj) into each given folder, each different; `lm` keeps no LoRA layers."
    def make(*dirs, seed: int = 0):
        import torch
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(seed)
        pm = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"]))
        try:
            for i, d in enumerate(dirs):
                if i:                                       # the next adapter: the LoRA weights shuffled
                    with torch.no_grad():
                        for n, p in pm.named_parameters():
                            if "lora_" in n: p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))
                pm.save_pretrained(d)
        finally:
            lm.model = pm.unload()                          # the shared model without the LoRA layers again
        return [str(d) for d in dirs]
    return make
