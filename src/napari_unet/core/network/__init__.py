"""The U-Net, its files (safetensors, bioimage.io packages), its device, the guard on its use."""
