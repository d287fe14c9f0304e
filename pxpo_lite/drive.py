"""Feedback sessions that survive a recycled Colab runtime: keep the session folder on Google Drive.

A Colab runtime's disk is wiped when the runtime is recycled (idle time-out, a new session, a
crash), and a :class:`pxpo_lite.feedback.FeedbackSession` folder on it goes too. On Colab,
notebook 06 can keep the folder under ``/content/drive/MyDrive/pxpo-lite/sessions/`` instead;
after a restart, mount Drive again and ``FeedbackSession.load(folder, pipe)`` continues.

:func:`session_location` decides where the folder goes and says why (pure, testable anywhere);
mounting (``google.colab.drive.mount``) needs a person to grant access in the browser, so it is
never attempted headless or off Colab.

Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

from pathlib import PurePosixPath

DRIVE_MOUNT = "/content/drive"
"""Where ``google.colab.drive.mount`` mounts Google Drive on Colab."""

DRIVE_SESSIONS = DRIVE_MOUNT + "/MyDrive/pxpo-lite/sessions"
"""The folder on Drive that holds the sessions (one sub-folder per session)."""


def session_location(session_dir: str, on_drive: bool, in_colab: bool, headless: bool) -> tuple[str, bool, str]:
    """``(folder, mount_drive, message)``: where to keep a feedback session and why.

    With ``on_drive`` on Colab and not headless: ``DRIVE_SESSIONS/<last part of session_dir>``
    and ``mount_drive=True`` (the caller mounts ``DRIVE_MOUNT`` before using it). Otherwise
    ``session_dir`` unchanged, with the reason in ``message``.
    """
    if not isinstance(session_dir, str) or not session_dir.strip():
        raise ValueError(f"session_dir must be a non-empty folder name, got {session_dir!r}")
    for name, v in (("on_drive", on_drive), ("in_colab", in_colab), ("headless", headless)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False, got {v!r}")
    if not on_drive:
        return session_dir, False, f"session folder: {session_dir!r} (on this runtime's disk)"
    if not in_colab:
        return session_dir, False, (
            "SESSION_ON_DRIVE is ignored: not running on Colab (Google Drive can be mounted only there); "
            f"the session stays in {session_dir!r} on this machine's disk, which survives a kernel restart"
        )
    if headless:
        return session_dir, False, (
            "SESSION_ON_DRIVE is ignored in a headless run (mounting Drive needs a person to grant access); "
            f"the session stays in {session_dir!r}"
        )
    name = PurePosixPath(session_dir.rstrip("/")).name
    folder = f"{DRIVE_SESSIONS}/{name}"
    return folder, True, f"session folder on Google Drive: {folder!r} (survives a recycled runtime)"
