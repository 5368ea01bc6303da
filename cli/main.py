import click
from podlink.protocol import PROTOCOL_VERSION
@click.group()
@click.version_option(package_name="podlink")
def main(): 
    """podlink"""
