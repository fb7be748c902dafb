from django.contrib.auth import views as auth_views
from django.urls import path

from leaderboard.accounts import views

app_name = "accounts"

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("profile/", views.profile, name="profile"),
    path("profile/tokens/", views.create_token, name="create-token"),
    path("profile/tokens/<int:token_id>/revoke/", views.revoke_token, name="revoke-token"),
]
