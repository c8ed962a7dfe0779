import pytest

from detforge.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "val", "predict", "export", "bench", "doctor", "models"):
        assert name in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def _command_raising(monkeypatch, make_error):
    """``detforge models`` replaced by a command that raises ``make_error()``."""

    def command(argv):
        raise make_error()

    monkeypatch.setattr("detforge.commands.models.main", command)
    monkeypatch.delenv("DETFORGE_DEBUG", raising=False)


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised ``from inner``, as Lightning and jsonargparse wrap what a data module or model raised."""
    try:
        try:
            raise inner
        except BaseException as err:
            raise outer from err
    except BaseException as err:
        return err


def test_bugs_keep_their_traceback(monkeypatch):
    for error in (RuntimeError("a bug"), ValueError("a bug"), KeyError("a bug")):
        _command_raising(monkeypatch, lambda error=error: error)
        with pytest.raises(type(error)):
            main(["models"])


def test_wrapped_user_error_prints_the_innermost_message(monkeypatch, capsys):
    from detforge.errors import DataError, InvalidValueError

    wrapper = ValueError("Call to compute_fn of link '_num_classes(data)' failed:\nmore of the wrapper")
    _command_raising(monkeypatch, lambda: _wrapped(DataError("ann.json: not valid JSON"), wrapper))
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "detforge models: ann.json: not valid JSON\n"
    outer = InvalidValueError("--data: cannot read")
    _command_raising(monkeypatch, lambda: _wrapped(DataError("ann.json: line 1\nline 2"), outer))
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "detforge models: ann.json: line 1\n"


def test_file_errors_on_the_users_files(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "missing.json"

    def open_missing():
        try:
            missing.open()
        except FileNotFoundError as err:
            return err

    _command_raising(monkeypatch, open_missing)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == f"detforge models: {missing}: No such file or directory\n"
    _command_raising(monkeypatch, lambda: _wrapped(open_missing(), RuntimeError("wrapper")))
    assert main(["models"]) == 2
    assert capsys.readouterr().err == f"detforge models: {missing}: No such file or directory\n"

    def bug_while_handling():  # an error raised while handling a missing file is another error: a bug
        try:
            try:
                missing.open()
            except FileNotFoundError:
                raise TypeError("a bug in the fallback")  # noqa: B904 - the implicit context is the point
        except TypeError as err:
            return err

    _command_raising(monkeypatch, bug_while_handling)
    with pytest.raises(TypeError):
        main(["models"])


def test_weights_unavailable_is_one_line_and_exit_1(monkeypatch, capsys):
    from detforge.models.weights import WeightsUnavailableError

    error = WeightsUnavailableError("weights not cached: download URL and put it at PATH")
    _command_raising(monkeypatch, lambda: _wrapped(error, RuntimeError("wrapper")))
    assert main(["models"]) == 1
    assert capsys.readouterr().err == "detforge models: weights not cached: download URL and put it at PATH\n"


def test_error_in_a_dataloader_worker(monkeypatch, capsys):
    """A DataLoader worker's error reaches the main process as the same class with the worker's traceback as
    its message: the line is the message at the end of that traceback."""
    from torch.utils.data import DataLoader, Dataset

    from detforge.errors import DataError

    class Broken(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise DataError("labels/0.txt: line 1: expected 'class cx cy w h'")

    def load():
        try:
            next(iter(DataLoader(Broken(), num_workers=1)))
        except DataError as err:
            return err

    error = load()
    assert "Original Traceback" in str(error)  # the reference: what the DataLoader re-raises
    _command_raising(monkeypatch, lambda: error)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "detforge models: labels/0.txt: line 1: expected 'class cx cy w h'\n"


def test_argparse_errors_still_exit_2(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["anchors", "--data", "synthetic:8", "--imgsz", "many"])
    assert raised.value.code == 2
    assert "--imgsz" in capsys.readouterr().err
