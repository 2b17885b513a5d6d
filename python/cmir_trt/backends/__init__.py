"""Inference backends behind cmir_trt.Engine: the native C++ CPU engine (plans) and PyTorch on the CPU (checkpoints).

The CUDA backends live in cmir_trt.gpu (PyTorch + CUDA graphs) and cmir_trt.tensorrt (TensorRT engines).
"""
