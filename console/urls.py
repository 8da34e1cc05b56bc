from django.urls import path

from console import views

app_name = "console"
urlpatterns = [
    path("topup/", views.topup, name="topup"),
    path("bills/", views.bills, name="bills"),
    path("usage/", views.usage_records, name="usage"),
    path("usage/export.csv", views.usage_export, name="usage-export"),
    path("usage/<int:record_id>/", views.usage_detail, name="usage-detail"),
    path("transactions/", views.transactions, name="transactions"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("tokens/<int:token_id>/rotate/", views.token_rotate, name="token-rotate"),
    path("organizations/", views.organizations, name="organizations"),
    path("organizations/<slug:slug>/", views.organization, name="organization"),
    path("settings/", views.settings_page, name="settings"),
]
