"""msvit.data: every dataset is built from tiny files written in tmp_path in the real on-disk formats."""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fakedata import (C10DVS_CLASSES, C10DVS_COUNTS, aedat2_bytes, aedat3_bytes, make_cifar,
                      make_cifar10_dvs_events_np, make_dvs128_archive, make_dvs128_events_np, make_imagenet, py2,
                      random_events, write_py2_pickle)
from msvit.data import (CIFAR10_DVS_SPLIT_FILE, DigitsDataset, DVSAugment, build_datasets, dataset_num_classes,
                        read_dvs128_aedat, resolve_num_classes)
from msvit.training.distributed import DistEnv
from msvit.errors import ConfigError, DataError, cli_entry, user_message
from msvit.training.loaders import build_eval_loader

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def cifar_cfg(name: str, root: Path, **over) -> dict:
    """The keys of cifar10/cifar10.yml that matter for data."""
    cfg = dict(dataset=name, data_dir=str(root), download=False, verify_data=False, img_size=32,
               num_classes=dataset_num_classes(name), mean=CIFAR_MEAN, std=CIFAR_STD, crop_pct=1.0,
               scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.5, color_jitter=0.0, interpolation="bicubic",
               train_interpolation="bicubic", aa="rand-m9-n1-mstd0.4-inc1", reprob=0.25, remode="const", recount=1)
    cfg.update(over)
    return cfg


# ------------------------------------------------------------------------------------------------- CIFAR

def test_py2_pickles_have_bytes_keys_like_the_real_files(tmp_path):
    write_py2_pickle(tmp_path / "b", py2({"data": np.zeros((1, 3072), np.uint8), "labels": [3]}))
    with open(tmp_path / "b", "rb") as f:
        assert set(pickle.load(f, encoding="bytes")) == {b"data", b"labels"}
    with open(tmp_path / "b", "rb") as f:
        assert set(pickle.load(f, encoding="latin1")) == {"data", "labels"}


@pytest.mark.parametrize("name,n_train,n_test,n_cls", [("cifar10", 10, 3, 10), ("cifar100", 6, 4, 100)])
def test_cifar_reads_real_pickle_format_without_md5(tmp_path, name, n_train, n_test, n_cls):
    raw = make_cifar(tmp_path, name, np.random.default_rng(0))
    train, val = build_datasets(cifar_cfg(name, tmp_path))
    assert (len(train), len(val)) == (n_train, n_test)
    no_train, val_only = build_datasets(cifar_cfg(name, tmp_path), train=False)
    assert no_train is None and val_only.targets == val.targets
    assert len(train.classes) == n_cls and isinstance(train.classes[0], str)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    test_file = "test_batch" if name == "cifar10" else "test"
    data, labels = raw[test_file]
    assert val.targets == labels and max(train.targets) == n_cls - 1
    # eval at 32 px with crop_pct 1 is just normalisation: the pixels come back in CHW order
    x, y = val[1]
    expected = (torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255 - torch.tensor(CIFAR_MEAN)[:, None, None]) \
        / torch.tensor(CIFAR_STD)[:, None, None]
    assert y == labels[1]
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_md5_check_fails_on_custom_files(tmp_path, name):
    make_cifar(tmp_path, name, np.random.default_rng(1))
    with pytest.raises(DataError, match="--verify-data false") as info:
        build_datasets(cifar_cfg(name, tmp_path, verify_data=True))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_folder_says_download(tmp_path, name):
    with pytest.raises(DataError, match="--download") as info:
        build_datasets(cifar_cfg(name, tmp_path / "nowhere"))
    assert "\n" not in str(info.value)


def test_cifar_missing_file_and_malformed_pickle(tmp_path):
    make_cifar(tmp_path, "cifar10", np.random.default_rng(2))
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="malformed"):
        build_datasets(cifar_cfg("cifar10", tmp_path))
    (folder / "batches.meta").unlink()
    with pytest.raises(DataError, match="batches.meta"):
        build_datasets(cifar_cfg("cifar10", tmp_path))


def no_network(*args, **kwargs):
    """Stands in for urllib.request.urlopen on a machine without network: refused at once."""
    raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_download_without_network(tmp_path, monkeypatch, name, folder):
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as info:
        build_datasets(cifar_cfg(name, tmp_path, download=True))
    message = str(info.value)
    assert "\n" not in message and "Connection refused" in message
    assert f"https://www.cs.toronto.edu/~kriz/{name.replace('cifar', 'cifar-')}-python.tar.gz" in message
    assert str(tmp_path / folder) in message and "without --download" in message


# ---------------------------------------------------------------------------------------------- ImageNet

def imagenet_cfg(root: Path, **over) -> dict:
    cfg = dict(dataset="imagenet", data_dir=str(root), img_size=64, num_classes=1000, mean=[0.485, 0.456, 0.406],
               std=[0.229, 0.224, 0.225], crop_pct=0.875, scale=[0.08, 1.0], ratio=[0.75, 1.3333333333],
               hflip=0.5, color_jitter=0.0, interpolation="bicubic", train_interpolation="bicubic",
               aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1)
    cfg.update(over)
    return cfg


def test_imagenet_image_folder(tmp_path):
    make_imagenet(tmp_path)
    train, val = build_datasets(imagenet_cfg(tmp_path))
    assert (len(train), len(val)) == (4, 2)
    assert train.classes == val.classes == ["n01440764", "n01443537"]
    x, y = train[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 1
    x, y = val[0]
    assert x.shape == (3, 64, 64) and y == 0


def test_evaluation_needs_only_the_val_split(tmp_path):
    make_imagenet(tmp_path)
    for path in (tmp_path / "train").rglob("*.JPEG"):
        path.unlink()  # train/ holds empty class folders only: unusable, but evaluation never looks
    train, val = build_datasets(imagenet_cfg(tmp_path), train=False)
    assert train is None and len(val) == 2 and val[1][1] == 1
    with pytest.raises(DataError, match="no usable images"):
        build_datasets(imagenet_cfg(tmp_path))
    train, val = build_datasets({"dataset": "digits"}, train=False)
    assert train is None and len(val) == 360


def test_imagenet_missing_or_inconsistent_folders(tmp_path):
    with pytest.raises(DataError, match=r"train/<wnid>/\*\.JPEG"):
        build_datasets(imagenet_cfg(tmp_path))
    make_imagenet(tmp_path)
    (tmp_path / "val" / "n01443537" / "n01443537_0.JPEG").unlink()
    (tmp_path / "val" / "n01443537").rmdir()
    with pytest.raises(DataError, match="differ"):
        build_datasets(imagenet_cfg(tmp_path))


def test_more_classes_than_num_classes_is_an_error(tmp_path):
    make_imagenet(tmp_path)
    with pytest.raises(DataError, match="num_classes: 2"):
        build_datasets(imagenet_cfg(tmp_path, num_classes=1))


def test_num_classes_of_an_image_folder_is_its_class_folder_count(tmp_path):
    make_imagenet(tmp_path, wnids=("ant", "bee", "cat"))
    (tmp_path / "train" / "cat" / "cat_0.JPEG").write_bytes(b"not read: the count lists folders only")
    assert resolve_num_classes(imagenet_cfg(tmp_path, num_classes=None), train=True) == 3
    assert resolve_num_classes(imagenet_cfg(tmp_path, num_classes=3), train=True) == 3
    for wanted in (1000, 2):  # ImageNet-1K's count, or one that would crop the labels: refused, naming both
        with pytest.raises(ConfigError) as info:
            resolve_num_classes(imagenet_cfg(tmp_path, num_classes=wanted), train=True)
        message = str(info.value)
        assert f"num_classes is {wanted} but {tmp_path / 'train'} holds 3 class folders" in message
        assert "--num-classes 3" in message and "null" in message
    (tmp_path / "val" / "dog").mkdir()  # evaluation counts val/, which a checkpoint's head must fit
    assert resolve_num_classes(imagenet_cfg(tmp_path, num_classes=None), train=False) == 4
    with pytest.raises(DataError, match=r"val folder .* not found"):
        resolve_num_classes(imagenet_cfg(tmp_path / "nothing", num_classes=None), train=False)


def test_fixed_count_sets_keep_their_class_count():
    for name, count in (("cifar10-dvs", 10), ("cifar100", 100), ("dvs128_gesture", 11), ("digits", 10)):
        assert resolve_num_classes({"dataset": name, "num_classes": None}, train=True) == count
        assert resolve_num_classes({"dataset": name, "num_classes": count}, train=False) == count
        with pytest.raises(ConfigError, match=f"set --num-classes {count}"):
            resolve_num_classes({"dataset": name, "num_classes": count + 1}, train=True)


def test_an_empty_or_too_small_validation_split_is_refused(tmp_path):
    make_cifar10_dvs_events_np(tmp_path, np.random.default_rng(11), counts={cls: 3 for cls in C10DVS_CLASSES})
    cfg = dvs_cfg("cifar10_dvs", tmp_path, time_step=2, val_batch_size=4, workers=0, pin_mem=False)
    _, val = build_datasets(cfg, train=False)
    assert len(val) == 0  # 3 recordings per class: all train under the 90/10 split
    with pytest.raises(DataError) as info:
        build_eval_loader(val, cfg, DistEnv(0, 1, 0, torch.device("cpu")))
    message = str(info.value)
    assert f"validation split of cifar10_dvs in {tmp_path} is empty (0 samples)" in message
    assert "fewer than 10 recordings" in message and "\n" not in message
    _, digits_val = build_datasets({"dataset": "digits"}, train=False)
    digits = {"dataset": "digits", "val_batch_size": 8, "workers": 0, "pin_mem": False}
    subset = torch.utils.data.Subset(digits_val, range(3))
    with pytest.raises(DataError, match="has 3 samples, fewer than the 4 processes .*run fewer processes"):
        build_eval_loader(subset, digits, DistEnv(1, 4, 1, torch.device("cpu")))
    assert len(build_eval_loader(subset, digits, DistEnv(2, 3, 2, torch.device("cpu"))).sampler) == 1


def read_all(dataset, workers: int) -> None:
    for _ in DataLoader(dataset, batch_size=2, num_workers=workers):
        pass


def test_unreadable_image_is_a_data_error_naming_it(tmp_path):
    make_imagenet(tmp_path)
    bad = tmp_path / "train" / "n01443537" / "n01443537_0.JPEG"
    good = bad.read_bytes()
    for content, reason in ((b"\x00 not an image" * 8, "cannot identify image file"),
                            (good[:len(good) // 2], "image file is truncated")):
        bad.write_bytes(content)
        train, _ = build_datasets(imagenet_cfg(tmp_path))
        with pytest.raises(DataError) as info:
            read_all(train, workers=0)
        message = str(info.value)
        assert message.startswith(f"cannot read image {bad} ({reason}") and "\n" not in message
        assert "--resume auto" in message


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_one_error_line_also_from_a_worker(tmp_path, capsys, workers):
    make_imagenet(tmp_path)
    bad = tmp_path / "val" / "n01440764" / "n01440764_0.JPEG"
    bad.write_bytes(b"GIF89a and then nothing")
    _, val = build_datasets(imagenet_cfg(tmp_path), train=False)
    with pytest.raises(SystemExit) as info:  # cli_entry exits 2 on a UserError only
        cli_entry(read_all)(val, workers)
    assert info.value.code == 2
    # a worker's error reaches the main process with the worker's traceback in its message: only its line is printed
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {bad} (") and err.count("\n") == 1 and "Traceback" not in err
    # torch's re-raised exception is in a reference cycle with its traceback, which holds the DataLoader iterator:
    # break it, so that the worker is shut down now rather than by a later garbage collection (which stalls 5 s)
    info.value.__context__.__traceback__ = None


def test_user_message_is_one_line():
    assert user_message(DataError("plain")) == "plain"
    wrapped = ConfigError("Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                          "call last):\n  File \"x.py\", line 1, in f\nmsvit.errors.ConfigError: bad: fix it\n")
    assert user_message(wrapped) == "bad: fix it"
    assert user_message(DataError("first\n  second\n")) == "first second"


# ------------------------------------------------------------------------------------------ DVS helpers

def expected_frames(events: dict[str, np.ndarray], T: int) -> np.ndarray:
    """spikingjelly's split_by='number': T slices of N // T events, the last one taking the remainder."""
    n = len(events["t"])
    frames = np.zeros((T, 2, 128, 128), np.float32)
    for i in range(T):
        lo, hi = i * (n // T), (n if i == T - 1 else (i + 1) * (n // T))
        np.add.at(frames[i], (events["p"][lo:hi], events["y"][lo:hi], events["x"][lo:hi]), 1)
    return frames


def dvs_cfg(name: str, root: Path, **over) -> dict:
    cfg = dict(dataset=name, data_dir=str(root), download=False, verify_data=True, time_step=4, img_size=128,
               num_classes=dataset_num_classes(name), dvs_aug=False)
    cfg.update(over)
    return cfg


def sample_path(dataset, index: int) -> Path:
    if isinstance(dataset, torch.utils.data.Subset):
        return Path(dataset.dataset.samples[dataset.indices[index]][0])
    return Path(dataset.samples[index][0])


# ---------------------------------------------------------------------------------------- DVS128 Gesture

def test_dvs128_frames_from_events_np(tmp_path):
    written = make_dvs128_events_np(tmp_path, np.random.default_rng(0))
    train, val = build_datasets(dvs_cfg("dvs128_gesture", tmp_path))
    assert (len(train), len(val)) == (11, 11)
    assert build_datasets(dvs_cfg("dvs128_gesture", tmp_path), train=False)[0] is None
    # spikingjelly labels by sorted folder name ('0', '1', '10', '2', ...): the authors' checkpoints use it too
    assert train.class_to_idx == {name: i for i, name in enumerate(sorted(str(k) for k in range(11)))}
    for dataset, split in ((train, "train"), (val, "test")):
        for index in (0, 2, 10):
            x, y = dataset[index]
            path = sample_path(dataset, index)
            events = written[f"{split}/{path.parent.name}/{path.name}"]
            assert x.shape == (4, 2, 128, 128) and x.dtype == torch.float32 and isinstance(y, int)
            assert y == dataset.class_to_idx[path.parent.name]
            assert x.sum().item() == len(events["t"])
            np.testing.assert_array_equal(x.numpy(), expected_frames(events, 4))
    assert (tmp_path / "frames_number_4_split_by_number" / "train" / "10").is_dir()


def test_dvs128_augmented_train_split_and_interrupted_frames(tmp_path):
    make_dvs128_events_np(tmp_path, np.random.default_rng(1))
    train, val = build_datasets(dvs_cfg("dvs128_gesture", tmp_path, dvs_aug=True, time_step=3))
    assert "DVSAugment" in repr(train.transform) and "DVSAugment" not in repr(val.transform)
    torch.manual_seed(0)
    for index in range(11):
        x, _ = train[index]
        assert x.shape == (3, 2, 128, 128) and x.dtype == torch.float32
        assert x.sum().item() <= np.load(sample_path(train, index))["frames"].sum()  # moves or drops events only
    # a frames folder left half-written by an interrupted run is refused, not silently used
    next((tmp_path / "frames_number_3_split_by_number" / "test" / "5").glob("*.npz")).unlink()
    with pytest.raises(DataError, match="delete that folder"):
        build_datasets(dvs_cfg("dvs128_gesture", tmp_path, time_step=3))


def test_dvs128_missing_archive_gives_manual_steps(tmp_path):
    with pytest.raises(DataError) as info:
        build_datasets(dvs_cfg("dvs128_gesture", tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert "DvsGesture.tar.gz" in message and "ibm.com" in message and str(tmp_path / "download") in message
    assert not (tmp_path / "events_np").exists()


def test_dvs128_aedat_reader_matches_spikingjelly(tmp_path):
    from spikingjelly.datasets import load_aedat_v3

    events = random_events(np.random.default_rng(3), 50)
    (tmp_path / "a.aedat").write_bytes(aedat3_bytes(events, overflow=1))
    ours, theirs = read_dvs128_aedat(tmp_path / "a.aedat"), load_aedat_v3(str(tmp_path / "a.aedat"))
    events["t"][25:] += 1 << 31  # the second packet's overflow counter
    for key in "txyp":
        np.testing.assert_array_equal(ours[key], theirs[key])
        np.testing.assert_array_equal(ours[key], events[key])


def test_dvs128_converts_the_archive(tmp_path):
    counts = make_dvs128_archive(tmp_path, np.random.default_rng(4))
    with pytest.raises(DataError, match="--verify-data false"):
        build_datasets(dvs_cfg("dvs128_gesture", tmp_path))
    assert (tmp_path / "download" / "DvsGesture.tar.gz").is_file()  # never deleted (spikingjelly would)
    train, val = build_datasets(dvs_cfg("dvs128_gesture", tmp_path, verify_data=False, time_step=2))
    assert (len(train), len(val)) == (11, 11)
    assert not (tmp_path / "events_np.partial").exists()
    for dataset, split, trial in ((train, "train", "user01_fluorescent"), (val, "test", "user24_led")):
        for index in range(11):
            x, y = dataset[index]
            path = sample_path(dataset, index)
            label = int(path.parent.name)
            assert path.name == f"{trial}_0.npz" and y == dataset.class_to_idx[str(label)]
            assert x.shape == (2, 2, 128, 128) and x.sum().item() == counts[split][label]


def test_dvs_frames_of_another_time_step_are_refused(tmp_path):
    make_dvs128_events_np(tmp_path, np.random.default_rng(7))
    build_datasets(dvs_cfg("dvs128_gesture", tmp_path, time_step=2))  # integrates frames_number_2_...
    frames_root = tmp_path / "frames_number_2_split_by_number"
    files = sorted(frames_root.rglob("*.npz"))
    # one sample of another T: found when it is read, named with both Ts
    np.savez_compressed(files[-1], frames=np.zeros((3, 2, 128, 128), np.float32))
    train, _ = build_datasets(dvs_cfg("dvs128_gesture", tmp_path, time_step=2))
    index = next(i for i in range(len(train)) if sample_path(train, i) == files[-1])
    with pytest.raises(DataError) as info:
        train[index]
    message = str(info.value)
    assert str(files[-1]) in message and "holds 3 frames" in message and "time_step is 2" in message
    assert f"delete {frames_root}" in message
    # a whole folder of another T: refused before any training, by the first sample of each split
    for path in files:
        np.savez_compressed(path, frames=np.zeros((3, 2, 128, 128), np.float32))
    with pytest.raises(DataError, match=r"holds 3 frames .* but time_step is 2"):
        build_datasets(dvs_cfg("dvs128_gesture", tmp_path, time_step=2))
    first = sample_path(train, 0)
    first.write_bytes(b"not an npz file")
    with pytest.raises(DataError, match=f"cannot read DVS frames file {re.escape(str(first))}"):
        build_datasets(dvs_cfg("dvs128_gesture", tmp_path, time_step=2))


def test_model_t_must_match_the_dvs_time_step(tmp_path):
    make_dvs128_events_np(tmp_path, np.random.default_rng(8))
    with pytest.raises(ConfigError, match="model_kwargs sets T=8 but time_step is 4") as info:
        build_datasets(dvs_cfg("dvs128_gesture", tmp_path, model_kwargs={"T": 8}))
    assert "--time-step 8" in str(info.value)
    train, _ = build_datasets(dvs_cfg("dvs128_gesture", tmp_path, model_kwargs={"T": 4, "embed_dim": 32}))
    assert train[0][0].shape[0] == 4


# ------------------------------------------------------------------------------------------- CIFAR10-DVS

def test_cifar10_dvs_frames_and_90_10_split(tmp_path):
    written = make_cifar10_dvs_events_np(tmp_path, np.random.default_rng(5))
    train, val = build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2))
    assert len(train) + len(val) == sum(C10DVS_COUNTS.values())
    assert set(train.indices).isdisjoint(val.indices)
    for label, (cls, n) in enumerate(C10DVS_COUNTS.items()):
        own_order = sorted(os.listdir(tmp_path / "events_np" / cls))  # cifar10_x_0, _1, _10, _11, _2, ...
        cut = -(-9 * n // 10)  # ceil(0.9 n)
        got_train = [sample_path(train, i).name for i in range(len(train)) if train[i][1] == label]
        got_val = [sample_path(val, i).name for i in range(len(val)) if val[i][1] == label]
        assert got_train == own_order[:cut] and got_val == own_order[cut:]
    assert len(val) == 4  # 10 -> 9 + 1, 11 -> 10 + 1, 20 -> 18 + 2, the small classes all train
    x, y = val[0]
    path = sample_path(val, 0)
    events = written[f"{path.parent.name}/{path.name}"]
    assert x.shape == (2, 2, 128, 128) and x.dtype == torch.float32 and y == 0
    assert x.sum().item() == len(events["t"])
    np.testing.assert_array_equal(x.numpy(), expected_frames(events, 2))
    # the Spike-driven Transformer's CIFAR10-DVS frames: 64x64, each pixel the mean of a 2x2 block
    _, small_val = build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2, img_size=64))
    small, full = small_val[0][0], expected_frames(events, 2)
    blocks = np.zeros((2, 2, 64, 64), dtype=np.float32)
    for i in range(64):
        for j in range(64):
            blocks[:, :, i, j] = full[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((-2, -1))
    assert small.shape == (2, 2, 64, 64) and 0 < blocks[blocks > 0].min() < 1  # some blocks hold partial counts
    np.testing.assert_allclose(small.numpy(), blocks, rtol=0, atol=1e-6)


def test_cifar10_dvs_integration_prints_no_line_per_sample(tmp_path, capfd, caplog):
    make_cifar10_dvs_events_np(tmp_path, np.random.default_rng(9))
    n = sum(C10DVS_COUNTS.values())
    with caplog.at_level(logging.INFO, logger="msvit"):
        build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2))
    out, err = capfd.readouterr()
    # spikingjelly's loop printed 'Start to integrate [...]' and 'Frames [...] saved.' per sample; the msvit logger's
    # one line may reach the console when an earlier test set up its handler
    assert [line for line in (out + err).splitlines() if "integrating the events" not in line] == []
    assert [r.getMessage() for r in caplog.records if "integrating" in r.getMessage()] == [
        f"CIFAR10-DVS: integrating the events into 2 frames per sample in {tmp_path / 'frames_number_2_split_by_number'}"
        f": {n} files (once; later runs reuse them)"]
    assert len(list((tmp_path / "frames_number_2_split_by_number").rglob("*.npz"))) == n
    assert not list(tmp_path.glob("*.partial"))
    build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2))  # reused: not even 'The directory [...] exists'
    assert capfd.readouterr() == ("", "")


def test_a_damaged_events_file_stops_the_integration_naming_it(tmp_path):
    make_cifar10_dvs_events_np(tmp_path, np.random.default_rng(10))
    bad = tmp_path / "events_np" / "dog" / "cifar10_dog_1.npz"
    bad.write_bytes(b"not an npz file")
    with pytest.raises(DataError, match=f"cannot read DVS events file {re.escape(str(bad))}"):
        build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2))
    assert not (tmp_path / "frames_number_2_split_by_number").exists()  # not left for a later run to trust


def test_cifar10_dvs_split_cache_is_written_reused_and_refreshed(tmp_path):
    make_cifar10_dvs_events_np(tmp_path, np.random.default_rng(6))
    train, val = build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2))
    cache = tmp_path / CIFAR10_DVS_SPLIT_FILE
    saved = json.loads(cache.read_text())
    assert saved["num_samples"] == 69 and saved["train"] == train.indices and saved["test"] == val.indices
    stamp, content = cache.stat().st_mtime_ns, cache.read_bytes()
    train2, val2 = build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2))
    assert cache.stat().st_mtime_ns == stamp and cache.read_bytes() == content
    assert train2.indices == train.indices and val2.indices == val.indices
    no_train, val_only = build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2), train=False)
    assert no_train is None and val_only.indices == val.indices
    # a cache that no longer matches the data (here: a wrong count and split) is recomputed
    cache.write_text(json.dumps(dict(saved, num_samples=3, train=[0], test=[1, 2])))
    train3, val3 = build_datasets(dvs_cfg("cifar10_dvs", tmp_path, time_step=2))
    assert train3.indices == train.indices and val3.indices == val.indices
    assert cache.read_bytes() == content


def test_cifar10_dvs_missing_data_says_download(tmp_path):
    with pytest.raises(DataError, match="--download") as info:
        build_datasets(dvs_cfg("cifar10_dvs", tmp_path))
    assert "airplane.zip" in str(info.value) and "\n" not in str(info.value)


def test_cifar10_dvs_download_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as info:
        build_datasets(dvs_cfg("cifar10_dvs", tmp_path, download=True))
    message = str(info.value)
    assert "\n" not in message and "https://ndownloader.figshare.com/files/" in message
    assert "truck.zip" in message and str(tmp_path / "download") in message and "without --download" in message


def test_cifar10_dvs_converts_class_zips(tmp_path):
    (tmp_path / "download").mkdir()
    for cls in C10DVS_CLASSES:
        with zipfile.ZipFile(tmp_path / "download" / f"{cls}.zip", "w") as zf:
            # 3 events at raw (x 10, y 20, on) and 2 at raw (x 5, y 6, off)
            zf.writestr(f"{cls}/cifar10_{cls}_0.aedat", aedat2_bytes([10, 5, 10, 5, 10], [20, 6, 20, 6, 20],
                                                                     [1, 0, 1, 0, 1]))
            zf.writestr(f"{cls}/cifar10_{cls}_1.aedat", aedat2_bytes([1], [2], [0]))
    with pytest.raises(DataError, match="--verify-data false"):
        build_datasets(dvs_cfg("cifar10_dvs", tmp_path))
    train, val = build_datasets(dvs_cfg("cifar10_dvs", tmp_path, verify_data=False, time_step=2))
    assert len(train) + len(val) == 20
    assert not (tmp_path / "events_np.partial").exists()
    x, y = train[0]
    assert sample_path(train, 0).name == "cifar10_airplane_0.npz" and y == 0
    assert x.shape == (2, 2, 128, 128) and x.sum().item() == 5
    # spikingjelly's orientation: x = 127 - y_raw, y = 127 - x_raw, polarity inverted
    assert x[:, 0, 127 - 10, 127 - 20].sum().item() == 3
    assert x[:, 1, 127 - 5, 127 - 6].sum().item() == 2


# -------------------------------------------------------------------------------------------- DVSAugment

def identical_frames(T: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 4, (1, 2, size, size), generator=g).float()
    return frame.expand(T, -1, -1, -1).contiguous()


@pytest.mark.parametrize("op", DVSAugment.OPS)
def test_dvs_augment_same_geometry_for_all_frames(op):
    x = identical_frames()
    aug = DVSAugment(ops=(op,), generator=torch.Generator().manual_seed(1))
    changed = False
    for _ in range(8):
        out = aug(x)
        assert out.shape == x.shape and out.dtype == torch.float32
        for t in range(1, 4):
            assert torch.equal(out[t], out[0])
        assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}  # nearest: counts stay counts
        changed |= not (torch.equal(out, x) or torch.equal(out, x.flip(-1)))
    assert changed == (op != "identity")


def test_dvs_augment_flip_only_is_deterministic_with_a_seed():
    x = identical_frames(seed=2)
    runs = []
    for _ in range(2):
        aug = DVSAugment(ops=("identity",), generator=torch.Generator().manual_seed(123))
        runs.append([aug(x) for _ in range(16)])
    flipped = []
    for a, b in zip(*runs):
        assert torch.equal(a, b)
        assert torch.equal(a, x) or torch.equal(a, x.flip(-1))
        flipped.append(torch.equal(a, x.flip(-1)))
    assert any(flipped) and not all(flipped)


def test_dvs_augment_cutout_zeros_one_square():
    x = torch.ones(3, 2, 64, 64)
    aug = DVSAugment(flip_p=0.0, ops=("cutout",), generator=torch.Generator().manual_seed(3))
    sides = set()
    for _ in range(20):
        zero = aug(x) == 0
        mask = zero[0, 0]
        assert (zero == mask).all()  # the same box in every frame and channel
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        side = len(rows)
        assert len(cols) == side and mask.sum().item() == side * side
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        assert int((0.001 * 64 * 64) ** 0.5) <= side <= round((0.11 * 64 * 64) ** 0.5)
        sides.add(side)
    assert len(sides) > 3


def test_dvs_augment_translation_moves_along_one_axis():
    x = torch.zeros(2, 2, 32, 32)
    x[:, :, 16, 16] = 1
    for op, moving_axis in (("translate_x", 1), ("translate_y", 0)):
        aug = DVSAugment(flip_p=0.0, ops=(op,), generator=torch.Generator().manual_seed(4))
        moved = False
        for _ in range(10):
            pos = aug(x)[0, 0].nonzero()
            assert len(pos) == 1
            assert pos[0, 1 - moving_axis].item() == 16 and abs(pos[0, moving_axis].item() - 16) <= 5
            moved |= pos[0, moving_axis].item() != 16
        assert moved


def test_dvs_augment_rejects_unknown_ops():
    with pytest.raises(ValueError, match="subset"):
        DVSAugment(ops=("zoom",))


# ------------------------------------------------------------------------------------------------ digits

def test_digits_split_shapes_and_labels():
    train, val = build_datasets({"dataset": "digits", "seed": 1})
    assert (len(train), len(val)) == (1437, 360)
    assert set(train.indices).isdisjoint(val.indices) and len(set(train.indices) | set(val.indices)) == 1797
    for dataset in (train, val):
        x, y = dataset[7]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int) and 0 <= y <= 9
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
        assert x.min().item() >= -1.0 and x.max().item() <= 1.0  # [0, 1] pixels, 0.5 / 0.5 normalisation
    assert set(val.targets) == set(range(10))
    for c in range(10):  # stratified: each class keeps its 20% share in val
        total = train.targets.count(c) + val.targets.count(c)
        assert abs(val.targets.count(c) - 0.2 * total) <= 1


def test_digits_split_is_fixed_and_eval_has_no_augmentation():
    _, val1 = build_datasets({"dataset": "digits", "seed": 1})
    _, val2 = build_datasets({"dataset": "digits", "seed": 999, "img_size": 32})
    assert np.array_equal(val1.indices, val2.indices) and val1.targets == val2.targets
    assert torch.equal(val1[5][0], val2[5][0]) and torch.equal(val1[5][0], val1[5][0])  # no random eval aug
    _, val3 = build_datasets({"dataset": "digits", "img_size": 16, "mean": [0, 0, 0], "std": [1, 1, 1]})
    x, _ = val3[0]
    assert x.shape == (3, 16, 16) and x.min().item() >= 0 and 0.9 < x.max().item() <= 1.0


def shifted(x: torch.Tensor, dx: int, dy: int, fill: float) -> torch.Tensor:
    out = torch.full_like(x, fill)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_digits_train_translation():
    plain = DigitsDataset(True)[3][0]
    augmented = DigitsDataset(True, augment=True, generator=torch.Generator().manual_seed(0))
    moves = set()
    for _ in range(12):
        x = augmented[3][0]
        # the image is the plain one moved by at most 2 px, background (0 -> -1 after normalising) filling in
        match = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                 if torch.allclose(x, shifted(plain, dx, dy, -1.0), atol=1e-6)]
        assert match, "not a translation of the plain image by <= 2 pixels"
        moves.add(match[0])
    assert len(moves) > 2


# -------------------------------------------------------------------------------------------------- misc

def test_dataset_num_classes_and_unknown_names():
    assert [dataset_num_classes(n) for n in ("cifar10", "cifar100", "imagenet", "dvs128_gesture",
                                             "cifar10_dvs", "digits")] == [10, 100, 1000, 11, 10, 10]
    assert dataset_num_classes("cifar10-dvs") == 10
    with pytest.raises(ConfigError, match="unknown dataset"):
        dataset_num_classes("mnist")
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_datasets({"dataset": "svhn"})
    with pytest.raises(DataError, match="num_classes: 10"):
        build_datasets({"dataset": "digits", "num_classes": 5})
