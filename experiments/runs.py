"""The local run folder: everything a study produces, written as it goes, independent of MLflow.

    <runs dir>/<YYYYmmdd-HHMMSS>_<distortion>_<backend>[_quick]/
        study.json                    the parsed arguments, environment, parent run id, status
        <transform>_seed<seed>/
            state.json                epochs done, the arm's row once tested, what MLflow holds
            history.csv               one row per finished epoch, appended at its end
            checkpoint-<epoch>.keras  the compiled model (weights and optimizer state) after the
                                      last finished epoch, for --resume
            model.keras               the trained model without its optimizer (loads under every backend)
            warps/epoch_XXX.png       the transformer's galleries (ST-CNN arms)
        comparison.md, comparison.csv, <distortion>_<backend>.md/.csv, learning_curves.png

JSON files are replaced atomically (written beside, then renamed), so an interrupted study
leaves either the old or the new state, never half of one.
"""

import csv
import datetime
import json
import os
from pathlib import Path

HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "val_error",
    "epoch_seconds",
    "step_ms",
    "timestamp_ms",
)


def write_json(path, value):
    path = Path(path)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)


def new_folder(runs_dir, distortion, backend, quick):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}_{distortion}_{backend}" + ("_quick" if quick else "")
    folder = Path(runs_dir) / name
    suffix = 1
    while folder.exists():  # two studies started in the same second
        suffix += 1
        folder = Path(runs_dir) / f"{name}_{suffix}"
    folder.mkdir(parents=True)
    return folder


class Study:
    """`study.json` of a run folder: arguments, environment, parent run id, status."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / "study.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, **changes):
        self.data.update(changes)
        write_json(self.path, self.data)

    def arm(self, transform, seed):
        return Arm(self.folder / f"{transform}_seed{seed}", transform, seed)


class Arm:
    """The folder of one (transform, seed): its state, per-epoch history, checkpoints and model.

    `state["mlflow"]` records what MLflow already holds: the run id, whether the parameters are
    logged, how many epochs of metrics, which artifacts, the final metrics and model, and
    whether the run is closed; whatever is missing is logged from this folder by the next sync.
    """

    def __init__(self, folder, transform, seed):
        self.folder = Path(folder)
        self.transform, self.seed = transform, seed
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state_path = self.folder / "state.json"
        self.history_path = self.folder / "history.csv"
        self.model_path = self.folder / "model.keras"
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
        else:
            self.state = {
                "transform": transform,
                "seed": seed,
                "epochs_done": 0,
                "status": "new",
                "row": None,
                "mlflow": {
                    "run_id": None,
                    "params": False,
                    "epochs": 0,
                    "artifacts": [],
                    "final": False,
                    "closed": False,
                },
            }

    @property
    def name(self):
        return f"{self.transform} seed {self.seed}"

    @property
    def mlflow(self):
        return self.state["mlflow"]

    def save(self):
        write_json(self.state_path, self.state)

    def history(self):
        """The finished epochs' rows, as dicts of floats (`epoch` an int)."""
        if not self.history_path.exists():
            return []
        with open(self.history_path) as handle:
            rows = [
                {name: float(value) for name, value in row.items() if value != ""} for row in csv.DictReader(handle)
            ]
        for row in rows:
            row["epoch"] = int(row["epoch"])
        return rows[: self.state["epochs_done"]]  # an epoch appended before an interruption, not yet done

    def keras_history(self):
        """The history as Keras's `History.history` dict of lists."""
        rows = self.history()
        return {name: [row[name] for row in rows if name in row] for name in HISTORY_COLUMNS[1:6]}

    def finish_epoch(self, metrics, save_checkpoint):
        """Records epoch `epochs_done + 1`: its history row, then its checkpoint, then the state
        naming both (older checkpoints are removed only after)."""
        epoch = self.state["epochs_done"] + 1
        rows = self.history()  # drops a row left by an epoch that did not finish
        rows.append({"epoch": epoch, **metrics})
        with open(self.history_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        checkpoint = self.checkpoint_path(epoch)
        save_checkpoint(checkpoint)
        self.state.update(epochs_done=epoch, status="training")
        self.save()
        for old in self.folder.glob("checkpoint-*.keras"):
            if old != checkpoint:
                old.unlink()
        return epoch

    def checkpoint_path(self, epoch=None):
        epoch = self.state["epochs_done"] if epoch is None else epoch
        return self.folder / f"checkpoint-{epoch:04d}.keras"

    def warps(self):
        return sorted((self.folder / "warps").glob("epoch_*.png"))
