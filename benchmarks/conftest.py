"""Record the software and device next to every benchmark result."""


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch
    import triton

    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                              else "cpu (no GPU: toy sizes, PyTorch path)")
