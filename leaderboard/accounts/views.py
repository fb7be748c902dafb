"""Sign-up and the profile page, where API tokens are created and revoked."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from leaderboard.accounts.models import ApiToken


def signup(request: HttpRequest) -> HttpResponse:
    form: UserCreationForm = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        # Named: the lockout backend comes first in AUTHENTICATION_BACKENDS and logs no one in.
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.username}.")
        return redirect("submissions:mine")
    return render(request, "registration/signup.html", {"form": form})


def _render_profile(request: HttpRequest, new_token: str = "") -> HttpResponse:
    user_id = request.user.pk
    assert user_id is not None  # every caller is behind login_required
    tokens = ApiToken.objects.filter(user_id=user_id)
    return render(request, "accounts/profile.html", {"tokens": tokens, "new_token": new_token})


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    return _render_profile(request)


@login_required
@require_POST
def create_token(request: HttpRequest) -> HttpResponse:
    name = (request.POST.get("name") or "default").strip()[:100] or "default"
    _, raw = ApiToken.issue(request.user, name=name)
    return _render_profile(request, new_token=raw)


@login_required
@require_POST
def revoke_token(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    messages.info(request, f"Token {token.key_prefix}… revoked.")
    return redirect("accounts:profile")
