"""URLs served by Django: the dashboard pages, the ops API and the admin.

The team API (/v1/) is not here: `dashboard/asgi.py` routes it to a lean ASGI app
(`limiter/gateway/app.py`) in front of Django's middleware stack.
"""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard import budget_views, share_views, token_views, views
from dashboard.access import public
from dashboard.api import api

dashboard_patterns = [
    path("", views.home, name="overview"),
    path("live/", views.overview, name="live"),  # a team user's (its teams' rows)
    path("live/ceilings/reset/", views.ceiling_reset, name="ceiling_reset"),
    path("limits/", views.limits, name="limits"),
    path("limits/profiles/<int:pk>/", views.profile, name="profile"),
    path("limits/<int:pk>/edit/", views.limit_edit, name="limit_edit"),
    path("limits/profiles/<int:pk>/models/", views.model_limit_create, name="model_limit_create"),
    path("limits/<int:pk>/delete/", views.model_limit_delete, name="model_limit_delete"),
    path("limits/<int:pk>/shadow/", views.limit_shadow, name="limit_shadow"),
    path("teams/", views.teams, name="teams"),
    path("teams/<int:pk>/", views.team, name="team"),
    path("teams/<int:pk>/pause/", views.team_pause, name="team_pause"),
    path("teams/<int:pk>/profile/", views.team_profile, name="team_profile"),
    path("teams/<int:pk>/keys/", views.key_create, name="key_create"),
    path("teams/<int:pk>/budgets/", budget_views.budget_create, name="budget_create"),
    path("budgets/<int:pk>/delete/", budget_views.budget_delete, name="budget_delete"),
    path("budgets/<int:pk>/shadow/", budget_views.budget_shadow, name="budget_shadow"),
    path("teams/<int:pk>/sharing/", share_views.team_sharing, name="team_sharing"),
    path("teams/<int:pk>/shares/", share_views.share_create, name="share_create"),
    path("shares/<int:pk>/delete/", share_views.share_delete, name="share_delete"),
    path("keys/<int:pk>/revoke/", views.key_revoke, name="key_revoke"),
    path("keys/<int:pk>/rotate/", views.key_rotate, name="key_rotate"),
    path("refusals/", views.refusals, name="refusals"),
    path("refusals.csv", views.refusals_csv, name="refusals_csv"),
    path("usage/", views.usage, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("audit/", views.audit, name="audit"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/webhooks/<int:pk>/", views.webhook_edit, name="webhook_edit"),
    path("alerts/webhooks/<int:pk>/test/", views.webhook_test, name="webhook_test"),
    path("alerts/webhooks/<int:pk>/enable/", views.webhook_enable, name="webhook_enable"),
    path("tokens/", token_views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", token_views.token_revoke, name="token_revoke"),
]

urlpatterns = [
    path("", include((dashboard_patterns, "dashboard"))),
    path("login/", public(views.LoginView.as_view()), name="login"),  # throttled
    path("logout/", public(auth_views.LogoutView.as_view()), name="logout"),
    path("api/", api.urls),
    path("admin/", admin.site.urls),
]

if settings.SLUICE_OIDC:
    from dashboard import oidc  # imports mozilla-django-oidc only when single sign-on is on

    # Its login page (with "Sign in with ..."), logout (the provider's too) and callback.
    urlpatterns = oidc.urlpatterns + urlpatterns
