"""The U-Net, its files (safetensors, bioimage.io packages), its device and the guard on its use."""
