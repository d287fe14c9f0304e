"""Notebook 06 keeps a feedback session on Google Drive only on Colab, with a person present."""
import pytest

from pxpo_lite.drive import DRIVE_SESSIONS, session_location


def test_on_colab_with_a_person_the_folder_goes_to_drive():
    folder, mount, why = session_location("runs/06_feedback_session", True, in_colab=True, headless=False)
    assert folder == DRIVE_SESSIONS + "/06_feedback_session" and mount is True
    assert folder.startswith("/content/drive/MyDrive/pxpo-lite/sessions/") and "Google Drive" in why


@pytest.mark.parametrize("in_colab, headless, reason", [(False, False, "not running on Colab"),
                                                         (False, True, "not running on Colab"),
                                                         (True, True, "headless")])
def test_ignored_off_colab_or_headless_and_says_why(in_colab, headless, reason):
    folder, mount, why = session_location("runs/s/", True, in_colab=in_colab, headless=headless)
    assert (folder, mount) == ("runs/s/", False)
    assert "ignored" in why and reason in why


def test_off_by_default_keeps_the_folder():
    assert session_location("runs/s", False, in_colab=True, headless=False)[:2] == ("runs/s", False)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="session_dir"):
        session_location("", True, True, False)
    with pytest.raises(TypeError, match="headless"):
        session_location("runs/s", True, True, "no")
