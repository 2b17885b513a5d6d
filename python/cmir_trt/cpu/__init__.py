"""CPU-side tooling beside cmir_trt.gpu: the side-by-side CPU benchmark (cmir_trt.cpu.bench). No heavy imports here;
torch, ONNX Runtime and OpenVINO load inside the functions that use them."""
