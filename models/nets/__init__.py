"""Model architectures; importing this package registers every kind with models.registry."""
from models.nets import aae, ae, conv_vae, denoise, photo_ae, upscale, vae  # noqa: F401  (imported for registration)
