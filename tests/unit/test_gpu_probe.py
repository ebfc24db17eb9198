"""kernel_warmer.gpu: the GPU's model, SM and memory from NVML, without torch. Against a
stand-in NVML library here; tests/gpu/test_gpu_probe_gpu.py compares it with torch on a GPU."""

from __future__ import annotations

from kernel_warmer import gpu


class FakeNvml:
    """The five NVML calls the probe makes, writing through ctypes.byref as NVML does."""

    def __init__(self, count=2, name=b"NVIDIA H100 80GB HBM3", cc=(9, 0), total=81559 << 20, fail=None):
        self.count, self.name, self.cc, self.total, self.fail = count, name, cc, total, fail
        self.shutdown = 0

    def _rc(self, call):
        return 999 if call == self.fail else 0

    def nvmlInit_v2(self):
        return self._rc("init")

    def nvmlShutdown(self):
        self.shutdown += 1
        return 0

    def nvmlDeviceGetCount_v2(self, ref):
        ref._obj.value = self.count
        return self._rc("count")

    def nvmlDeviceGetHandleByIndex_v2(self, index, ref):
        ref._obj.value = 1234
        return self._rc("handle")

    def nvmlDeviceGetName(self, handle, buf, size):
        buf.value = self.name
        return self._rc("name")

    def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor):
        major._obj.value, minor._obj.value = self.cc
        return self._rc("cc")

    def nvmlDeviceGetMemoryInfo(self, handle, ref):
        ref._obj.total = self.total
        return self._rc("memory")


def test_the_first_gpu_as_nvml_reports_it():
    lib = FakeNvml()
    facts = gpu.probe(lambda: lib)
    assert facts == gpu.GpuFacts("NVIDIA H100 80GB HBM3", 90, 81559 << 20, 2)
    assert lib.shutdown == 1


def test_no_library_no_gpu_or_an_nvml_error_is_none():
    assert gpu.probe(lambda: None) is None
    assert gpu.probe(lambda: FakeNvml(count=0)) is None
    for call in ("init", "count", "handle", "name", "cc", "memory"):
        assert gpu.probe(lambda call=call: FakeNvml(fail=call)) is None, call


def test_this_machine_answers_without_raising():
    facts = gpu.probe()  # no NVIDIA driver on a CI machine: None; on a GPU machine: its facts
    assert facts is None or (facts.sm >= 30 and facts.memory_bytes > 0 and facts.count >= 1)
