"""How an arm is trained: optimizer, learning-rate schedule, the batch stream and exact step counts.

A run is a number of training steps (`--iterations`, else `--epochs` times the steps of one pass
over the training split). Batches come from `batch_stream`: an endless sequence of full batches
through a fresh permutation of the training digits per pass, a pure function of
`(seed, step)`. Training can therefore stop after exactly N steps (the last epoch is then
shorter) and continue from any finished epoch with the very batches an uninterrupted run would
have seen.
"""

import math

import keras
import numpy as np


def steps_per_epoch(train_size, batch_size):
    """The steps of one pass over `train_size` digits (the last batch of a pass borrows from the next)."""
    return math.ceil(train_size / batch_size)


def total_steps(args, train_size):
    """Training steps of one arm: `--iterations`, else `--epochs` passes."""
    return args.iterations or args.epochs * steps_per_epoch(train_size, args.batch_size)


def epoch_count(args, train_size):
    return math.ceil(total_steps(args, train_size) / steps_per_epoch(train_size, args.batch_size))


def learning_rate(args, train_size):
    """The `--schedule`: cosine decay to 0 over the run, `step` (multiplied by `--lr-drop-factor`
    every `--lr-drop-every` steps, the paper's 0.01 / 10 every 50k), or constant."""
    if args.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=total_steps(args, train_size))
    if args.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            args.lr, decay_steps=args.lr_drop_every, decay_rate=args.lr_drop_factor, staircase=True
        )
    return args.lr


def optimizer(args, train_size):
    """Adam, or SGD with `--momentum` (0 unless given: the paper states plain SGD)."""
    rate = learning_rate(args, train_size)
    if args.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=args.momentum)
    return keras.optimizers.Adam(rate)


def batch_stream(x, y, batch_size, seed, start_step=0):
    """Yields `(images, labels)` batches from step `start_step` on, for ever.

    Step `s` holds the digits `s * batch_size ... (s + 1) * batch_size - 1` of the concatenation
    of permutations `default_rng([seed, p]).permutation(len(x))` for passes `p = 0, 1, ...`.
    """
    size = len(x)
    position = start_step * batch_size
    epoch, offset = divmod(position, size)
    order = np.random.default_rng([seed, epoch]).permutation(size)
    while True:
        pieces, missing = [], batch_size
        while missing:
            piece = order[offset : offset + missing]
            pieces.append(piece)
            missing -= len(piece)
            offset += len(piece)
            if offset == size:
                epoch, offset = epoch + 1, 0
                order = np.random.default_rng([seed, epoch]).permutation(size)
        indices = np.concatenate(pieces)
        yield x[indices], y[indices]


def fit_segments(first_epoch, steps, epoch_steps):
    """`(initial_epoch, epochs, steps_per_epoch)` of the `fit` calls that train from epoch
    `first_epoch` (0-based, every earlier epoch done) to exactly `steps` steps: the full epochs,
    then the shorter last one if `epoch_steps` does not divide `steps`."""
    full, remainder = divmod(steps, epoch_steps)
    segments = []
    if first_epoch < full:
        segments.append((first_epoch, full, epoch_steps))
    if remainder and first_epoch <= full:
        segments.append((full, full + 1, remainder))
    return segments


def fit(model, train, seed, steps, epoch_steps, batch_size, first_epoch=0, shard=None, **fit_kwargs):
    """Fits `model` on the `train` arrays from epoch `first_epoch` to exactly `steps` steps; returns
    the merged Keras history dict of the epochs it trained. With a `shard` (a process of a torch
    data-parallel run, `experiments.torch_parallel`) it fits that process's slice of every batch."""
    x, y = train
    history = {}
    for initial_epoch, epochs, segment_steps in fit_segments(first_epoch, steps, epoch_steps):
        stream = batch_stream(x, y, batch_size, seed, start_step=initial_epoch * epoch_steps)
        if shard is not None:
            stream = shard.batches(stream)
        result = model.fit(
            stream,
            steps_per_epoch=segment_steps,
            initial_epoch=initial_epoch,
            epochs=epochs,
            shuffle=False,  # the stream is shuffled already
            **fit_kwargs,
        )
        for name, values in result.history.items():
            history.setdefault(name, []).extend(values)
    return history
