from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts import views as account_views
from console import views as console_views
from referrals import views as referral_views

# Django tries patterns in order: the gateway and the metering API, the busiest by far,
# come first.
urlpatterns = [
    path("v1/", include("usage.gateway.urls")),
    path("api/v1/", include("usage.urls")),
    path("", console_views.wallet_page, name="home"),
    path("console/", include("console.urls")),
    path("accounts/", include("accounts.urls")),
    path("billing/", include("billing.urls")),
    path("api/v1/", include("billing.api_urls")),
    path("api/v1/", include("redemption.api_urls")),
    path("api/v1/", include("referrals.api_urls")),
    path("redeem/", include("redemption.urls")),
    path("referrals/", include("referrals.urls")),
    path("r/<str:code>", referral_views.invite, name="referral-invite"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz", account_views.healthz, name="healthz"),
]
