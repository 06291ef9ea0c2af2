"""Put on PYTHONPATH by tests/test_engines.py only: lets accelerate run DeepSpeed and FSDP on CPU processes.

accelerate never selects DeepSpeed or FSDP when it runs on CPU (with ``cpu=True`` it forms a gloo process group and
chooses MULTI_CPU data parallelism; without it, no process group). This switches the distributed type of such a
gloo group to the engine the accelerate config asked for, exactly as accelerate does on GPUs, so that the real
DeepSpeed engine (its CPU accelerator, gloo) and torch FSDP2 run the loop in a test. The library has no such hook.
"""
import accelerate.state
from accelerate.utils import DistributedType

_original_init = accelerate.state.AcceleratorState.__init__


def _init(self, *args, deepspeed_plugin=None, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if deepspeed_plugin is not None:
        self.distributed_type = DistributedType.DEEPSPEED
        # every later AcceleratorState() copies PartialState's fields again; on GPUs PartialState says DEEPSPEED too
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
        deepspeed_plugin.set_mixed_precision(self._mixed_precision)
        deepspeed_plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = deepspeed_plugin
        self._mixed_precision = "no"  # DeepSpeed casts the model itself (its bf16/fp16 section)
        # ZeRO-3 keeps parameters under 1e5 values whole by default: every one of a tiny test model. Partition all.
        zero = deepspeed_plugin.deepspeed_config.setdefault("zero_optimization", {})
        if zero.get("stage") == 3:
            zero["stage3_param_persistence_threshold"] = 0
    elif fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin


accelerate.state.AcceleratorState.__init__ = _init
