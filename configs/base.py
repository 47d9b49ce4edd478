"""Shared defaults of every experiment; experiment files change only what differs.

Units: resolutions in input pixels (images; latents are 8x smaller), positions and grids
in tokens, durations in optimizer steps.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # model init, RPE-2D draws, noise and times (folded with the step)

    config.model = ml_collections.ConfigDict()
    config.model.variant = "DiT-XL/2"  # DiT-{S,B,L,XL}/{1,2,4,8}
    # Optional overrides of the variant's depth / width / heads (None: the variant's).
    config.model.depth = config_dict.placeholder(int)
    config.model.width = config_dict.placeholder(int)
    config.model.heads = config_dict.placeholder(int)
    config.model.qk_norm = False  # RMS-normalise q and k per head (FiTv2)
    config.model.micro_conditioning = True  # embed the crop (r, top, left)
    config.model.pos_encoding = "rope"  # rope | sincos | none
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    config.model.attention_impl = config_dict.placeholder(str)  # None (XLA picks) | xla | cudnn

    config.data = ml_collections.ConfigDict()
    config.data.source = "procedural"  # a name in rpe_jax.data.sources.SOURCES
    config.data.resolution = 256  # training resolution in pixels: int, "HxW" or (H, W)
    config.data.latent = True  # train on SD-VAE latents (8x smaller) instead of pixels
    config.data.num_classes = 1000
    config.data.seed = 0  # shuffling and augmentation
    config.data.train_size = 1_281_167  # examples per epoch (procedural: any size)
    config.data.eval_size = 50_000
    # Procedural scenes: smooth (shapes on smooth backgrounds, the recorded results) | detailed
    # (the same layouts with fine structure from 4 to 64 cycles per unit).
    config.data.procedural_style = "smooth"
    config.data.flip_prob = 0.5  # horizontal flips
    config.data.resize_crop_prob = 0.5  # probability of random resize-and-crop
    config.data.max_resize_factor = 2.0  # r ~ U[1, this]; at most max_positions / grid
    config.data.workers = 0  # Grain worker processes (0: in the main process)
    config.data.read_threads = 16  # Grain read threads per process (file decoding)
    config.data.root = ""  # image_folder / fashion_mnist folder ("": Debian's Fashion-MNIST)
    # photos source: the wallpapers folder ("": Debian's /usr/share/wallpapers) and the
    # (min, max) side of its square crop boxes in source pixels (log-uniform); outputs up to
    # min px carry true detail; max <= 1024, the width of the validation columns (photos.py).
    config.data.photos_dir = ""
    config.data.photo_box = (256, 1024)
    config.data.tfds_dir = ""  # TFDS data dir of imagenet2012 ("": ~/tensorflow_datasets)
    config.data.latents_dir = ""  # the latents/ folder written by --mode=extract_latents

    # --mode=extract_latents: encode an image source with the SD-VAE (config.vae.path).
    config.data.latent_source = "procedural"  # the image source to encode
    config.data.latent_splits = ("train",)
    config.data.latent_factors = (1.0, 1.25, 1.5, 1.75, 2.0)  # stored resize factors (with 1.0)
    config.data.latent_shard_size = 4096  # examples per ArrayRecord shard (unit of resume)
    config.data.latent_batch_size = 32  # images per encode call
    config.data.latent_sample = False  # store a posterior sample instead of the mean
    config.data.latent_dtype = "float32"  # float32 | float16 on disk

    config.positions = ml_collections.ConfigDict()
    config.positions.train_rule = "rpe2d"  # rpe2d (random sorted subsets) | grid (plain RoPE)
    config.positions.max_positions = 32  # L: draw each axis from [0, L); int or (L_h, L_w)
    config.positions.per_sample = True  # False: one draw shared by the batch
    config.positions.crop_coupled = False  # positions of a crop = slice of the resized draw

    config.objective = ml_collections.ConfigDict()
    config.objective.time_sampler = "uniform"  # uniform | logit_normal
    config.objective.time_mean = 0.0  # logit-normal mean
    config.objective.time_std = 1.0  # logit-normal std
    config.objective.label_dropout = 0.1  # probability of the null class (CFG)

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 256  # global batch over all processes and devices
    config.train.num_steps = 400_000
    config.train.learning_rate = 1e-4
    config.train.warmup_steps = 0
    config.train.cosine_decay = False  # cosine decay to min_lr_ratio * lr after warm-up
    config.train.min_lr_ratio = 0.0
    config.train.weight_decay = 0.0
    config.train.b1 = 0.9
    config.train.b2 = 0.999
    config.train.grad_clip = 1.0  # global-norm clipping (0: off)
    config.train.ema_decay = 0.9999  # at most; warmed up as min(this, (1 + step) / (10 + step))
    config.train.grad_accum_steps = 1  # micro-batches per optimizer step
    config.train.log_every = 100
    config.train.checkpoint_every = 5_000
    config.train.keep_checkpoints = 3
    config.train.async_checkpoint = True
    config.train.sample_every = 20_000  # 0: only at the end
    config.train.profile_steps = 0  # >0: trace this many steps after the first log
    # Wait for every step to finish before dispatching the next: required on CPU with
    # several simulated devices (jax >= 0.9 collective deadlock), free there.
    config.train.block_each_step = False
    # Start a fresh run from another run's parameters and EMA (e.g. pretrained at a lower
    # resolution; same architecture and optimizer settings), with a fresh optimizer.
    config.train.init_from = ""

    config.distributed = ml_collections.ConfigDict()
    config.distributed.mode = "none"  # none | auto (TPU pods, SLURM) | explicit (fields below)
    config.distributed.coordinator_address = ""  # host:port of process 0
    config.distributed.num_processes = config_dict.placeholder(int)
    config.distributed.process_id = config_dict.placeholder(int)
    config.distributed.initialization_timeout = 300  # seconds to wait for every process
    config.distributed.heartbeat_timeout = 100  # seconds without a heartbeat: a process is dead
    config.distributed.shutdown_timeout = 300  # seconds to wait for every process at exit
    config.distributed.cpu_collectives = ""  # "gloo" for multi-process CPU runs

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # (data, fsdp); one -1 fills the remaining devices

    config.sample = ml_collections.ConfigDict()
    config.sample.resolutions = (128, 256, 384, 512)  # inference resolutions (pixels)
    config.sample.methods = ("rpe2d",)  # names in rpe_jax.methods.METHODS
    config.sample.steps = 50
    config.sample.solver = "heun"  # euler | heun (ODE) | euler_maruyama (SDE)
    config.sample.sde_scale = 1.0  # SDE diffusion g^2 = 2 * this * (1 - t)
    config.sample.cfg_scale = 1.5  # 1: no guidance
    config.sample.guidance_interval = (0.0, 1.0)  # guide only for t in [lo, hi] (0 = noise)
    # Timestep shift: "method" (each method's own switch), "off", or a fixed alpha ("2.0").
    config.sample.time_shift = "method"
    config.sample.num_images = 16  # images per grid written during training (0: none)
    config.sample.watershed = 0.3  # Lumina-Next's PI -> NTK switch time
    config.sample.num_samples = 50_000  # --mode=sample: images per resolution and method
    config.sample.batch_size = 64  # images per sampling batch (global)
    config.sample.checkpoint_step = config_dict.placeholder(int)  # None: the latest

    config.eval = ml_collections.ConfigDict()
    config.eval.extractor = "inception"  # inception | classifier (rpe_jax.feature_extractor)
    config.eval.extractor_path = ""  # Inception .pth file, or a trained classifier directory
    # nsfwjs-4.3.0.tgz (`npm pack nsfwjs@4.3.0`) or its unpacked folder: adds the Frechet distance on
    # ImageNet MobileNetV2 features (`fd_mobilenet`); "": off
    config.eval.imagenet_features_path = ""
    config.eval.num_reference = 50_000  # real images per resolution for the statistics
    config.eval.reference_source = ""  # a data source name; "": config.data.source
    config.eval.reference_split = "validation"
    config.eval.batch_size = 64
    config.eval.pr_k = 3  # k of the k-NN radii of precision and recall
    # Bootstrap resamples of the generated samples for each cell's standard error (0: none).
    config.eval.bootstrap = 100
    # Flow-matching validation loss of the EMA checkpoint on real images at each test
    # resolution, per method: images (0: off) and times (midpoints of equal steps in (0, 1)).
    config.eval.fm_loss_images = 64
    config.eval.fm_loss_times = 16

    config.vae = ml_collections.ConfigDict()
    config.vae.path = ""  # local diffusers SD-VAE directory (latent runs)
    return config
