"""
A UNet / Gaussian-diffusion package with the public API of OpenAI's guided-diffusion
(same module, function and keyword names), written for this project, plus the plain
mean/variance UNets of "Trained Model in Supervised Deep Learning is a Conditional
Risk Minimizer" and the shared infrastructure of the stage scripts.
"""
